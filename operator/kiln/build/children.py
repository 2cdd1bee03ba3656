"""The objects a Decision creates: decide says which (the Secret, Jobs by unit and attempt), render says how."""
from __future__ import annotations

from kiln.build.decide import Decision, Facts, current_spec
from kiln.build.render import render_children


def children(facts: Facts, decision: Decision) -> list[dict]:
    """What carrying out the decision creates, in order."""
    if not (decision.credentials or decision.jobs):
        return []
    spec = current_spec(facts)
    return render_children(spec, facts.logins, facts.settings, secret=decision.credentials,
                           jobs=() if spec.builder.warm else decision.jobs)  # a warm builder's units are runs
