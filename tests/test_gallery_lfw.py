"""LFW identification through the HTTP API (the full protocol:
`python -m model.evaluate --protocol identify`, docs/accuracy.md):
the first 120 people with two or more photos are enrolled with their first photo, up to two
of their other photos are identified, and so are 120 photos of one-photo people, who must
come out further from anyone than most mated probes from their own person."""
from __future__ import annotations

import asyncio
from collections import Counter

import numpy as np
import pytest

from tests.service_support import DEFAULT_WEIGHTS
from tests.test_api import serving, settings_for

pytestmark = [pytest.mark.timeout(600), pytest.mark.slow]

PEOPLE = 120


def test_lfw_people_are_found_among_120_and_strangers_stay_further(lfw_images, tmp_path):
    from model.evaluate.lfw import identification_sets, identity_of
    from model.evaluate.metrics import open_set_identification
    sets = identification_sets(lfw_images, non_mated=PEOPLE, people=PEOPLE)
    mated, taken = [], Counter()
    for rel in sets.mated:  # up to two probes a person
        if taken[identity_of(rel)] < 2:
            taken[identity_of(rel)] += 1
            mated.append(rel)

    def upload(rel):
        return {"image": ("p.jpg", (lfw_images / rel).read_bytes(), "image/jpeg")}

    async def go():
        settings = settings_for(DEFAULT_WEIGHTS, gallery_url=f"sqlite:///{tmp_path}/g.db",
                                gallery_allow_anonymous=True)
        async with serving(settings) as (_, c):
            for rel in sets.gallery:
                r = await c.post(f"/galleries/lfw/subjects/{identity_of(rel)}/faces",
                                 files=upload(rel))
                assert r.status_code == 201, r.text
            listing = (await c.get("/galleries/lfw/subjects", params={"limit": 1000})).json()
            assert len(listing["subjects"]) == PEOPLE
            answers = {}
            for rel in mated + sets.non_mated:
                r = await c.post("/galleries/lfw/identify", files=upload(rel))
                assert r.status_code == 200, r.text
                answers[rel] = r.json()
            return answers

    answers = asyncio.run(go())
    top = {rel: a["candidates"] for rel, a in answers.items()}
    rank1 = np.array([top[p][0]["subject"] == identity_of(p) for p in mated])
    rank5 = np.mean([identity_of(p) in [c["subject"] for c in top[p]] for p in mated])
    mated_d = np.array([top[p][0]["distance"] for p in mated])
    non_d = np.array([top[p][0]["distance"] for p in sets.non_mated])
    default = answers[mated[0]]["threshold"]
    at_default = open_set_identification(rank1, mated_d, non_d, default)
    print(f"LFW 1:N over HTTP, {PEOPLE} people: {len(mated)} mated probes, rank-1 "
          f"{rank1.mean():.3f}, rank-5 {rank5:.3f}; at the default threshold {default:.4f}: "
          f"DIR {at_default['dir']:.3f}, FPIR {at_default['fpir']:.3f}")
    # the full protocol (1,680 people) gives rank-1 0.918 and rank-5 0.974; a gallery of
    # 120 is easier
    assert rank1.mean() >= 0.9 and rank5 >= 0.95
    # a stranger's nearest subject is further than a mated probe's own person, as a rule
    assert np.median(non_d) > np.median(mated_d[rank1]) + 0.03
    # the default threshold holds FPIR 1 % at 120 faces (docs/accuracy.md: 0.8-1.2 % at 10 to
    # 1,680 people over thousands of strangers; here 120 strangers, so at most a few), and
    # still finds most enrolled people (the protocol at 100 people: DIR 0.88)
    assert answers[mated[0]]["threshold_source"] == "fpir"
    assert answers[mated[0]]["gallery_faces"] == PEOPLE
    assert at_default["fpir"] <= 3 / PEOPLE
    assert at_default["dir"] >= 0.75
