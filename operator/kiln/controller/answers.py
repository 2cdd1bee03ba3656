"""answers: the registry's (or the build log's) answer to a question decide asked."""
from __future__ import annotations

from kiln.build.credentials import CredentialsProblem
from kiln.build.decide import Facts
from kiln.build.outcomes import cache_stats
from kiln.build.questions import (
    AssembleIndex,
    BuildLog,
    ImageContents,
    JobEvents,
    PushCheck,
    Question,
    RegistryProblem,
    TagDigest,
)
from kiln.clients.registry import RegistryError, assemble_index, image_platforms
from kiln.controller.gather import resolve_logins
from kiln.controller.runtime import Runtime
from kiln.spec.references import registry_host, repository_path


async def answer(runtime: Runtime, facts: Facts, question: Question):
    """The registry's (or the build log's) answer to a question decide asked; a RegistryProblem if it failed."""
    if isinstance(question, BuildLog):
        log = await runtime.kube.pod_log(facts.spec.namespace, question.pod, "buildkit")
        return cache_stats(log)
    if isinstance(question, JobEvents):
        events = await runtime.kube.events_of(facts.spec.namespace, "Job", question.job)
        return [(event.get("reason", ""), event.get("message", "")) for event in events]
    if isinstance(question, PushCheck):
        logins = facts.logins
    else:  # reading what was pushed needs the credentials, not a login that is Ready right now
        logins, _ = await resolve_logins(runtime.reader(), facts.spec, ready=False)
        if isinstance(logins, CredentialsProblem):  # a login deleted, say: waiting will not bring it back
            return RegistryProblem(logins.reason, logins.message, transient=not logins.stalls)
    try:
        if isinstance(question, PushCheck):
            for image in question.repositories:
                client = await runtime.registries.client(logins, registry_host(image))
                await runtime.registries.check_push(client, repository_path(image))
            return None
        client = await runtime.registries.client(logins, registry_host(question.image))
        repository = repository_path(question.image)
        if isinstance(question, TagDigest):
            media_type, _, digest = await client.get_manifest(repository, question.tag)
            return digest, media_type
        if isinstance(question, ImageContents):
            return await image_platforms(client, repository, question.digest, question.platforms)
        assert isinstance(question, AssembleIndex)
        return await assemble_index(client, repository, [(p, d) for p, d, _ in question.children], question.tags)
    except RegistryError as exc:
        return RegistryProblem(exc.reason, exc.message, exc.transient)


