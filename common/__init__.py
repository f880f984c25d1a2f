"""What every script shares: the user-error class and script wrapper, device and precision
choice, and seeding."""
