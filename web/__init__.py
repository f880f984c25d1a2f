"""The web page of ``app.py``: its layout, request handling and the review of masks."""
