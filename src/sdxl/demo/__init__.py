"""The demo model's training tools: procedural captioned shapes, tiny SDXL configs, training, evaluation."""
