"""What routes get injected: the app's one ``Service``, as the ``ServiceDep`` parameter type."""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Request

from service.state import Service


def get_service(request: Request) -> Service:
    """The app's Service."""
    service: Service = request.app.state.service
    return service


ServiceDep = Annotated[Service, Depends(get_service)]
