"""ECS deployments and an ALB's forwarding for moto 5.2, which stores services but runs nothing.

Patched into moto's classes on import (the threaded server runs in this process), imitating ECS's
documented behaviour only as far as the ecs target's tests need:
- create_service keeps deploymentConfiguration (moto drops it), and every create, task definition
  change or forced deployment starts a new deployment: a new id, PRIMARY, rolloutState COMPLETED once
  its tasks run (moto keeps one deployment whose rolloutState needs MOTO_ECS_SERVICE_RUNNING, and
  update_service never starts another). Its tasks run (group service:<name>, startedBy the deployment's
  id, the container's imageDigest resolved from the image); the previous deployment's tasks stop.
- An image in FAILING_IMAGES never starts, nor one whose platform (PLATFORMS) is not the task
  definition's runtimePlatform: its tasks stop with ECS's CannotPullContainerError naming the platform
  the image lacks. With the circuit breaker's rollback on, the deployment goes FAILED and ACTIVE,
  and a new PRIMARY deployment of the last completed task definition COMPLETES, the service steady
  again: the false-success case (aws-actions/amazon-ecs-deploy-task-definition #191, #494).
- With ROOM set, a task of an EC2 capacity provider larger than it is never placed: the deployment
  stays IN_PROGRESS and the service's events say "unable to place a task ... insufficient memory", as
  ECS says it while it keeps trying.
- list_tasks filters by serviceName (moto ignores it); create_service of a name that is ACTIVE is refused
  as ECS refuses it (moto replaces the service).
- create_service keeps a capacityProviderStrategy (moto drops it and says launchType EC2) and, as ECS
  does, refuses a capacity provider the cluster is not associated with.

`Alb` is a stand-in for the load balancer's data plane: an HTTP server that, for each request, reads
the listener's rules from moto (priority order; path-pattern, host-header and http-header conditions;
a weighted ForwardConfig picks by weight), finds the service registered with the chosen target group
and its running tasks, and answers as those tasks' image would: 200 with a prediction, or 500 for an
image in FAILING_SMOKE. It proves that a request with x-mldeploy-slot reaches that slot's target group
and service; it does not run the model (the serving tests do).
"""

from __future__ import annotations

import fnmatch
import json
import random
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from moto.core.utils import utcnow
from moto.ec2.models.elastic_network_interfaces import NetworkInterface
from moto.ecs.exceptions import InvalidParameterException
from moto.ecs.models import EC2ContainerServiceBackend, Task, ecs_backends
from moto.ecs.responses import EC2ContainerServiceResponse
from moto.elbv2.models import elbv2_backends
from moto.moto_api._internal import mock_random

FAILING_IMAGES: set[str] = set()   # images whose tasks never start (the circuit breaker trips)
FAILING_SMOKE: set[str] = set()    # images whose tasks answer 500
PLATFORMS: dict[str, str] = {}     # image -> the one platform its manifest has (else it has the task's)
ROOM: dict[str, int] = {}          # the EC2 cluster's largest free instance {cpu, memory}; {}: room for any task
PLATFORM_OF = {"X86_64": "linux/amd64", "ARM64": "linux/arm64"}   # runtimePlatform.cpuArchitecture -> platform
HITS: list[tuple[str, str]] = []   # (x-mldeploy-slot header, image digest that answered) per request


def reset() -> None:
    FAILING_IMAGES.clear()
    FAILING_SMOKE.clear()
    PLATFORMS.clear()
    ROOM.clear()
    HITS.clear()


def _image(backend: EC2ContainerServiceBackend, td: str) -> str:
    return str(backend.describe_task_definition(td).container_definitions[0]["image"])


def _roll(backend: EC2ContainerServiceBackend, cluster: str, service: Any) -> None:
    """A new deployment of the service's task definition, as ECS runs one (see the module docstring)."""
    td = backend.describe_task_definition(service.task_definition).arn
    service.task_definition = td
    image = _image(backend, td)
    now = utcnow()
    dep: dict[str, Any] = {"id": f"ecs-svc/{mock_random.randint(0, 32**12)}", "status": "PRIMARY",
                           "taskDefinition": td, "desiredCount": service.desired_count, "pendingCount": 0,
                           "runningCount": service.desired_count, "failedTasks": 0, "createdAt": now,
                           "updatedAt": now, "launchType": service.launch_type, "rolloutState": "COMPLETED"}
    dep["rolloutStateReason"] = f"ECS deployment {dep['id']} completed."
    name = service.name
    found = backend.describe_task_definition(td)
    wanted = PLATFORM_OF.get(((found.runtime_platform or {}).get("cpuArchitecture") or "X86_64").upper())
    mismatch = image in PLATFORMS and PLATFORMS[image] != wanted
    if ROOM and service.launch_type != "FARGATE" and (int(found.cpu) > ROOM["cpu"] or int(found.memory) > ROOM["memory"]):
        # no container instance can take the task: ECS keeps trying to place it and says why in an event
        dep.update(runningCount=0, rolloutState="IN_PROGRESS", rolloutStateReason=f"ECS deployment {dep['id']} in progress.")
        service.deployments = [dep]
        short = "memory" if int(found.memory) > ROOM["memory"] else "CPU"
        service.events.insert(0, {"id": str(mock_random.uuid4()), "createdAt": utcnow(), "message": (
            f"(service {name}) was unable to place a task because no container instance met all of its requirements. "
            f"The closest matching (container-instance 5e3b6f3c0a1d4c2e9f7a8b6c5d4e3f2a) has insufficient {short} "
            "available. For more information, see the Troubleshooting section of the Amazon ECS Developer Guide.")})
        return
    if image in FAILING_IMAGES or mismatch:  # ECS answers with the new deployment IN_PROGRESS; it fails later
        dep.update(runningCount=0, rolloutState="IN_PROGRESS", rolloutStateReason=f"ECS deployment {dep['id']} in progress.")
        service.deployments = [dep]
        service.failing = dep
        if mismatch:  # the pull fails: the tasks stop with ECS's reason (the old deployment's keep running)
            for task in _start(backend, cluster, service, found, dep["id"], image):
                backend.stop_task(cluster, task.task_arn, "CannotPullContainerError: pull image manifest has been "
                                  f"retried 5 time(s): image Manifest does not contain descriptor matching platform "
                                  f"'{wanted}'")
        return
    for task in backend.list_tasks(cluster, service_name=name, desiredStatus="RUNNING"):
        backend.stop_task(cluster, task.task_arn, f"deployment {dep['id']} replaced it")
    _start(backend, cluster, service, found, dep["id"], image)
    service.deployments = [dep]
    service.running_count = service.desired_count
    service.completed_task_definition = td


def _start(backend: EC2ContainerServiceBackend, cluster: str, service: Any, td: Any, deployment: str,
           image: str) -> list[Task]:
    """The service's tasks of a deployment, as ECS starts them (moto's run_task wants container-level
    memory Fargate does not)."""
    where, started = backend._get_cluster(cluster), []
    for _ in range(service.desired_count):
        task = Task(cluster=where, task_definition=td, container_instance_arn=None, resource_requirements=None,
                    backend=backend, group=f"service:{service.name}",
                    launch_type=service.launch_type or ("EC2" if getattr(service, "capacity_provider_strategy", None)
                                                        else "FARGATE"),
                    started_by=deployment, networking_configuration=service.network_configuration or None)
        for container in task.containers:
            container.image_digest = image.rsplit("@", 1)[-1]
        backend.tasks.setdefault(where.name, {})[task.task_arn] = task
        started.append(task)
    return started


def _fail(service: Any) -> None:
    """The failing deployment's tasks never started: the circuit breaker trips, and with rollback on
    ECS starts a deployment of the last completed task definition, which completes."""
    dep, name, now = service.failing, service.name, utcnow()
    service.failing = None
    breaker = (getattr(service, "deployment_configuration", None) or {}).get("deploymentCircuitBreaker") or {}
    dep.update(failedTasks=3, rolloutState="FAILED", rolloutStateReason="ECS deployment circuit breaker: tasks failed "
                                                                         "to start.")
    service.events.insert(0, {"id": str(mock_random.uuid4()), "createdAt": now, "message":
                              f"(service {name}) (deployment {dep['id']}) deployment failed: tasks failed to start. "
                              "(ECS deployment circuit breaker)"})
    previous = getattr(service, "completed_task_definition", None)
    if not (breaker.get("rollback") and previous):
        service.running_count = 0
        return
    dep["status"] = "ACTIVE"
    back = {**dep, "id": f"ecs-svc/{mock_random.randint(0, 32**12)}", "status": "PRIMARY", "taskDefinition": previous,
            "runningCount": service.desired_count, "failedTasks": 0, "rolloutState": "COMPLETED",
            "rolloutStateReason": "ECS deployment rolled back."}
    service.task_definition = previous
    service.deployments = [back, dep]
    service.running_count = service.desired_count
    service.events.insert(0, {"id": str(mock_random.uuid4()), "createdAt": now,
                              "message": f"(service {name}) has reached a steady state."})


_moto_describe_services = EC2ContainerServiceBackend.describe_services


def _describe_services(self: EC2ContainerServiceBackend, cluster_str: str, names: list[str]) -> Any:
    found, failures = _moto_describe_services(self, cluster_str, names)
    for service in found:
        if getattr(service, "failing", None):
            _fail(service)
    return found, failures


_moto_create_service = EC2ContainerServiceResponse.create_service
_moto_update_service = EC2ContainerServiceResponse.update_service
_moto_list_tasks = EC2ContainerServiceBackend.list_tasks


def _create_service(self: EC2ContainerServiceResponse) -> Any:
    name, cluster = self._get_param("serviceName"), self._get_param("cluster", "default")
    existing = self.ecs_backend.services.get(f"{cluster.split('/')[-1]}:{name}")
    if existing is not None and existing.status == "ACTIVE":  # ECS's answer (moto replaces the service)
        raise InvalidParameterException("Creation of service was not idempotent.")
    strategy = self._get_param("capacityProviderStrategy") or []
    associated = self.ecs_backend._get_cluster(cluster).capacity_providers or []
    if any(s["capacityProvider"] not in associated for s in strategy):
        raise InvalidParameterException("The specified capacity provider strategy cannot contain a capacity provider "
                                        "that is not associated with the cluster. Associate the capacity provider with "
                                        "the cluster or specify a valid capacity provider and try again.")
    result = _moto_create_service(self)
    service = result.result["service"]
    service.deployment_configuration = self._get_param("deploymentConfiguration")
    if strategy:  # ECS answers with the strategy and no launchType
        service.capacity_provider_strategy, service.launch_type = strategy, None
    _roll(self.ecs_backend, self._get_param("cluster", "default"), service)
    return result


def _update_service(self: EC2ContainerServiceResponse) -> Any:
    result = _moto_update_service(self)
    if self._get_param("taskDefinition") or self._get_param("forceNewDeployment"):
        _roll(self.ecs_backend, self._get_param("cluster", "default"), result.result["service"])
    return result


def _list_tasks(self: EC2ContainerServiceBackend, cluster_str: str | None = None, container_instance: str | None = None,
                family: str | None = None, started_by: str | None = None, service_name: str | None = None,
                desiredStatus: str | None = None) -> list[Any]:
    found = _moto_list_tasks(self, cluster_str, container_instance, family, started_by, None, desiredStatus)
    return [t for t in found if service_name is None or t.group == f"service:{service_name.split('/')[-1]}"]


# moto's awsvpc tasks read an ENI's private DNS name, which its NetworkInterface lacks
NetworkInterface.private_dns_name = property(lambda eni: f"ip-{eni.private_ip_address.replace('.', '-')}.ec2.internal")
EC2ContainerServiceResponse.create_service = _create_service
EC2ContainerServiceResponse.update_service = _update_service
EC2ContainerServiceBackend.list_tasks = _list_tasks
EC2ContainerServiceBackend.describe_services = _describe_services


# -- the ALB's data plane ----------------------------------------------------------------------------
def _matches(condition: dict[str, Any], path: str, headers: dict[str, str]) -> bool:
    field = condition["Field"]
    if field == "path-pattern":
        values = (condition.get("PathPatternConfig") or {}).get("Values") or condition.get("Values", [])
        return any(fnmatch.fnmatchcase(path, v) for v in values)
    if field == "host-header":
        values = (condition.get("HostHeaderConfig") or {}).get("Values") or condition.get("Values", [])
        return any(fnmatch.fnmatch(headers.get("host", "").split(":")[0], v) for v in values)
    if field == "http-header":
        config = condition["HttpHeaderConfig"]
        return any(fnmatch.fnmatch(headers.get(config["HttpHeaderName"].lower(), ""), v) for v in config["Values"])
    return False


class Alb:
    """The stand-in load balancer in front of one listener (see the module docstring)."""

    def __init__(self, account: str, region: str, listener_arn: str | None = None) -> None:
        """listener_arn None: the account's only listener, whichever it is now (the fault table resets moto)."""
        self.account, self.region, self.listener_arn = account, region, listener_arn
        alb = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                self.rfile.read(int(self.headers.get("Content-Length") or 0))
                status, body = alb.answer(self.path, {k.lower(): v for k, v in self.headers.items()})
                data = json.dumps(body).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()

    def answer(self, path: str, headers: dict[str, str]) -> tuple[int, dict[str, Any]]:
        elb = elbv2_backends[self.account][self.region]
        ecs = ecs_backends[self.account][self.region]
        listener = self.listener_arn or next(arn for lb in elb.load_balancers.values() for arn in lb.listeners)
        rules = sorted((r for r in elb.describe_rules(listener, None) if not r.is_default),
                       key=lambda r: int(r.priority))
        rule = next((r for r in rules if all(_matches(c, path, headers) for c in r.conditions)), None)
        if rule is None:
            return 404, {"error": "no rule matched (the listener's default action)"}
        action = rule.actions[0].data
        groups = (action.get("ForwardConfig") or {}).get("TargetGroups") or [{"TargetGroupArn": action["TargetGroupArn"],
                                                                              "Weight": 1}]
        groups = [g for g in groups if int(g.get("Weight", 1))]
        if not groups:
            return 503, {"error": "every target group has weight 0"}
        group = random.choices(groups, weights=[int(g.get("Weight", 1)) for g in groups])[0]["TargetGroupArn"]
        service = next((s for s in ecs.services.values() if s.status == "ACTIVE"
                        and any(lb.get("targetGroupArn") == group for lb in s.load_balancers)), None)
        if service is None:
            return 503, {"error": f"no service is registered with {group}"}
        cluster = service.cluster_name
        tasks = ecs.list_tasks(cluster, service_name=service.name, desiredStatus="RUNNING")
        if not tasks:
            return 503, {"error": f"{service.name} has no running task"}
        image = tasks[0].containers[0].image
        HITS.append((headers.get("x-mldeploy-slot", ""), image.rsplit("@", 1)[-1]))
        if image in FAILING_SMOKE:
            return 500, {"error": "the model failed"}
        return 200, {"outputs": [{"name": "probabilities", "data": [0.5, 0.5]}], "served_by": image}
