"""Training: state, steps, loop."""
