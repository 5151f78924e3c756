"""The conversation: its canonical messages, its history from the store, the context
window and folding.
"""
