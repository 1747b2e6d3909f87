"""Container healthcheck: exit 0 when the service at ADDRESS answers, 1 otherwise.

    python deploy/healthcheck.py http://127.0.0.1:8000/health    # any 2xx answer
    python deploy/healthcheck.py grpc://127.0.0.1:9098           # grpc.health.v1: SERVING

HTTP needs only the standard library (cheap to run inside a memory-capped device container);
gRPC is for Flower's ``--health-server-address`` (the SuperExec has no HTTP API).
"""

import sys
import urllib.request

TIMEOUT_S = 5.0


def http_ok(url: str) -> bool:
    with urllib.request.urlopen(url, timeout=TIMEOUT_S) as response:  # noqa: S310 - fixed URL
        return 200 <= response.status < 300


def grpc_serving(target: str) -> bool:
    import grpc
    from grpc_health.v1 import health_pb2, health_pb2_grpc

    with grpc.insecure_channel(target) as channel:
        stub = health_pb2_grpc.HealthStub(channel)
        reply = stub.Check(health_pb2.HealthCheckRequest(), timeout=TIMEOUT_S)
    return reply.status == health_pb2.HealthCheckResponse.SERVING


def main(address: str) -> int:
    try:
        if address.startswith("grpc://"):
            healthy = grpc_serving(address.removeprefix("grpc://"))
        else:
            healthy = http_ok(address)
    except Exception as err:  # noqa: BLE001 - any failure means unhealthy
        print(f"unhealthy: {address}: {err}", file=sys.stderr)
        return 1
    return 0 if healthy else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1]))
