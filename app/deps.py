"""Typed dependencies for the routes: the app's state, a task named in the path, the
job store, and a job that belongs to the caller."""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Request

from tasks import Task

from .auth import PrincipalDep
from .errors import NotFound
from .jobs.models import Job
from .jobs.store import JobStore
from .state import AppState


def get_state(request: Request) -> AppState:
    state: AppState = request.app.state.synth
    return state


StateDep = Annotated[AppState, Depends(get_state)]


def get_task(name: str, state: StateDep) -> Task:
    return state.task(name)


TaskDep = Annotated[Task, Depends(get_task)]


def get_jobs(state: StateDep) -> JobStore:
    return state.jobs


JobsDep = Annotated[JobStore, Depends(get_jobs)]


async def owned_job(job_id: str, jobs: JobsDep, owner: PrincipalDep) -> Job:
    """The job `job_id` of the caller; 404 for an unknown job and for another key's."""
    job = await jobs.get(job_id)
    if job is None or job.owner != owner:
        raise NotFound(f"unknown job {job_id!r}")
    return job


OwnedJobDep = Annotated[Job, Depends(owned_job)]


def wants_sse(request: Request, stream: bool) -> bool:
    return stream or "text/event-stream" in request.headers.get("accept", "")
