"""The V2 REST API on aiohttp: the only package that imports aiohttp."""
