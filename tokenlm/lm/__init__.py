"""The code language model (CodeLM, a Hugging Face GPT-2) and its training objectives."""
