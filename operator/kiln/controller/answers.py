"""answers: the registry's (or the build log's) answer to a question decide asked."""
from __future__ import annotations

from kiln.build.credentials import CredentialsProblem, merged_docker_config
from kiln.build.decide import Facts
from kiln.build.logs import LIVE, render_log
from kiln.build.opt_in import BUILDS, refusal
from kiln.build.outcomes import cache_stats, redacted
from kiln.build.questions import (
    AssembleIndex,
    BuildLog,
    ImageContents,
    JobEvents,
    KeptLog,
    PushCheck,
    Question,
    RegistryProblem,
    Signature,
    SignImage,
    TagDigest,
)
from kiln.clients import cosign
from kiln.clients.kube import path
from kiln.clients.registry import RegistryError, assemble_index, image_platforms
from kiln.controller.gather import redaction_values, resolve_logins
from kiln.controller.runtime import Runtime
from kiln.spec import reasons
from kiln.spec.references import registry_host, repository_path


async def answer(runtime: Runtime, facts: Facts, question: Question):
    """The registry's (or the build log's) answer to a question decide asked; a RegistryProblem if it failed."""
    if isinstance(question, BuildLog):
        return await _keep_log(runtime, facts, question)
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
        if isinstance(question, SignImage):
            return await _sign(runtime, facts, question, logins, client)
        assert isinstance(question, AssembleIndex)
        return await assemble_index(client, repository, [(p, d) for p, d, _ in question.children], question.tags)
    except (RegistryError, cosign.SigningError) as exc:
        return RegistryProblem(exc.reason, exc.message, exc.transient)


async def _keep_log(runtime: Runtime, facts: Facts, question: BuildLog) -> KeptLog:
    """The ended pod's log kept in a ConfigMap its Job owns, without a value of the build's Secrets."""
    namespace = facts.spec.namespace
    run = runtime.runs.get(namespace, question.job)
    log = run.log.bounded() if run else await runtime.kube.bounded_log(namespace, question.pod, "buildkit")
    job = next((j for j in facts.jobs if j["metadata"]["name"] == question.job), None)
    if log is None or job is None:  # the pod or its Job gone already: nothing to keep
        return KeptLog(0, 0, None)
    values = facts.secret_values or await redaction_values(runtime.reader(), facts.spec, facts.logins)
    text = log.text(lambda part: redacted(part, values))
    kept = render_log(job, text, (facts.spec.name, facts.spec.uid) if run else None)
    if not await runtime.kube.create(path("v1", "configmaps", namespace), kept) and run:
        # Its running log was written as it ran: this is the last of it.
        await runtime.kube.patch(path("v1", "configmaps", namespace, kept["metadata"]["name"]),
                                 {"metadata": {"annotations": {LIVE: None}}, "binaryData": kept["binaryData"]})
    return KeptLog(*cache_stats(text), kept["metadata"]["name"])


async def _sign(runtime: Runtime, facts: Facts, question: SignImage, logins, client) -> Signature:
    """Sign the pushed image with the key the build names, and find the signature cosign pushed.

    The registry is asked first, by kiln's own client, whose connections the address guard checks."""
    spec = facts.spec
    secret = await runtime.reader().secret(spec.namespace, question.key_secret)
    if secret is not None and (refused := refusal(secret, BUILDS, spec.name)):
        raise cosign.SigningError(refused)
    key = cosign.signing_key(secret, question.key_secret)
    repository = repository_path(question.image)
    before = set(await client.signatures(repository, question.digest))
    host = registry_host(question.image)
    login = next((item for item in logins if item.server == host), None)
    target = cosign.Target(f"{question.image}@{question.digest}", merged_docker_config([login] if login else []),
                           bool(login and login.insecure), login.ca_pem if login else None)
    fingerprint = await cosign.sign(runtime.settings.cosign, target, key)
    pushed = [digest for digest in await client.signatures(repository, question.digest) if digest not in before]
    if not pushed:
        raise RegistryError(reasons.SIGNING_FAILED, f"cosign signed {question.image}@{question.digest}, but the "
                                                    "registry lists no new signature for it")
    return Signature(f"{question.image}@{pushed[-1]}", fingerprint)


