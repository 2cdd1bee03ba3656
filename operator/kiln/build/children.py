"""The objects a Decision creates: decide says which (the Secret, Jobs by unit and attempt), render says how."""
from __future__ import annotations

from kiln.build.decide import Decision, Facts, current_spec
from kiln.build.render import render_children


def children(facts: Facts, decision: Decision) -> list[dict]:
    """What carrying out the decision creates, in order."""
    if not (decision.credentials or decision.jobs):
        return []
    return render_children(current_spec(facts), facts.logins, facts.settings, secret=decision.credentials,
                           jobs=decision.jobs)
