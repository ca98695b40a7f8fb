"""Inference on the chip as it stands: any readout, any data set, with or without analog periphery."""
