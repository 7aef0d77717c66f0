"""The model zoo: published weights fetched once into a local cache and checked by digest."""
