"""What the API, the event stream, the form and the dashboard show, read from the
store.
"""
