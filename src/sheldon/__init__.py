"""sheldon: the library of the pipeline's process (engine) and of its steps' (core, step, data,
training, serving), in layers; docs/explanation/architecture.md draws them."""

__version__ = "0.1.0"
