"""What the installed transformers builds: rotary modules, the landing check, live-model patching."""
