"""What happens to an image once a model is chosen: its outputs and their files."""
