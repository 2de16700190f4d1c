"""Model providers behind one neutral message type (see types.py). SDKs load lazily."""
