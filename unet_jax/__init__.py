"""unet-jax: the U-Net family in JAX/Flax."""
