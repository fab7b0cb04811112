"""What wraps the routes: the ASGI middlewares (assembled outermost-first by ``stack``) and the
connection-level guards the server installs (``deadlines``, ``broken_off``)."""
