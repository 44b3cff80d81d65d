"""The general model (GM): loading a Hugging Face VLM, the embedded tiny GM, and hidden-state capture."""
