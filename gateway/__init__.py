"""The HTTP gateway: merchant authentication, request validation, problem responses, the OpenAPI
document and a signing client (the pure parts), plus the aiohttp application that uses them."""
