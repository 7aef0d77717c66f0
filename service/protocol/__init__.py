"""The Open Inference Protocol (KServe v2, Triton's HTTP/REST API) on the one model: thin
routes (``routes``) over a codec with no HTTP in it (``codec``)."""
