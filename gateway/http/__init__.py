"""Thin Starlette endpoints: parse the request, call a service, shape the response."""
