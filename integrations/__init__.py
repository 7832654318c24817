"""Clients for the outside services modelplane talks to: the Hugging Face Hub and S3.

Each wraps a third-party library behind a small typed surface, converts its errors into ours,
and never logs or echoes credentials. Nothing here knows about GraphQL or MongoDB.
"""
