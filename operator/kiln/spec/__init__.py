"""The API contract, pure: specs parsed and checked as the API server checks them, image references, the
condition reasons, the operator's settings. Imports nothing else of kiln."""
