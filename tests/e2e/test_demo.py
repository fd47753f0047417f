"""The README's first command is the demo: it plays the whole story through the real processes, and
a second run on the same stack works as well as the first."""
from __future__ import annotations

import re
import subprocess
import sys

from app.operations.processes import ROOT

STEPS = ("== 1. An admin adds products", "== 2. A customer searches", "== 3. The customer signs up",
         "== 4. The warehouse (an admin) ships it", "== 5. Product stats follow the order", "== 6. The customer views",
         "== 7. The live sales dashboard")
DELAYS = ("product searchable", "order view", "shipment", "purchase count", "order history")


def run_demo() -> str:
    done = subprocess.run([sys.executable, "-m", "app.cli", "demo"], cwd=ROOT, capture_output=True, text=True,
                          timeout=900)
    assert done.returncode == 0, f"demo failed ({done.returncode}): {done.stderr[-2000:]}\n{done.stdout[-3000:]}"
    return done.stdout


def test_demo_plays_the_story_twice_in_a_row(setup_done) -> None:
    for _ in range(2):
        out = run_demo()
        positions = [out.index(step) for step in STEPS]
        assert positions == sorted(positions), "the story's steps are out of order"
        assert "> POST /api/products" in out and '"name": "Wireless Headphones"' in out
        assert "> GET /api/products/search?q=wireless+headphones&category=Electronics&max_price=100" in out
        assert "< 201" in out and "< 202" in out and '"freshness": "current"' in out and '"status": "shipped"' in out
        for what in DELAYS:
            assert re.search(rf"^  {what}\s+\d+ ms$", out, re.M), f"no measured delay for {what}"
        assert re.search(r"^sales dashboard: http://127\.0\.0\.1:\d+/api/dashboard/sales", out, re.M)
        # every caller acts with a token of its role, and another customer's token is refused the order
        assert "(as customer: Authorization: Bearer" in out and "(as operator: Authorization: Bearer" in out
        assert re.search(r"\(as another customer: .*\n\n> GET /api/orders/[0-9a-f-]+\n< 403\n", out), out[-3000:]
        assert "eyJ" not in out, "a token was printed"
        assert out.rstrip().endswith("demo passed")
