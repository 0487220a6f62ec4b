"""The child process of the file fuzz suite (``test_fuzz_files.py``): load a batch of folders, report each.

Reads ``{"memory_mb": int, "jobs": [...]}`` as JSON on stdin, limits its own address space
to what it uses after the imports plus ``memory_mb`` (``RLIMIT_AS``), then for each job
prints one line ``{"i": i, "start": true}`` before the load and one with its outcome after,
so that the parent can attribute a hang or a crash to the job that was running. A job is

    {"op": "gpt", "path": folder}                          GPT.from_pretrained
    {"op": "gpt16", "path": folder}                        the same, cast to float16
    {"op": "checkpoint", "path": file}                     train.load_checkpoint onto a fresh GPT
    {"op": "adapter", "path": folder}                      PeftModel.from_pretrained onto a fresh GPT
    {"op": "load_adapter", "path": folder, "good": folder} load_adapter onto a PeftModel holding
                                                           ``good``; after a refusal the model must be
                                                           as it was and ``good`` must load under the
                                                           same name (a retry)
    {"op": "run_cache", "path": folder}                    experiments.runs.RunCache.read of the run the folder
                                                           caches (``run_request()``): a damaged entry is named in
                                                           a RunCacheWarning (an error here), never trained
    {"op": "verify_out", "path": folder}                   minilora.io.replacing_output_folder(folder, "verify report")
    {"op": "pretrain_out", "path": folder}                 minilora.io.claim_output_folder(folder, "pretrain run")

An outcome is "ok", "error" (one of minilora.errors, with its type and message; for the
output folders an OutputFolderError or another OSError), or "broken" (anything else:
another exception type, or a failed load that changed the model).
"""

import json
import os
import resource
import sys
import traceback


RUN_KEY = "fuzz"  # the cached run's key; its spec is run_spec()


def run_spec():
    from minilora.experiments.runs import RunSpec

    return RunSpec("cls", "lora", "Wq+Wv", 2, steps=3)


def run_request() -> dict:
    """What the fuzzed run is cached under: ``run_spec()`` on the toy base, ``RUN_KEY`` its identity."""
    from minilora.experiments.runs.cache import request

    return request("toy", run_spec(), {"fuzz": RUN_KEY})


def main() -> None:
    request = json.loads(sys.stdin.read())
    import numpy as np

    from minilora import io
    from minilora.errors import LoadError, OutputFolderError
    import warnings

    from minilora.experiments.runs import RunCache, RunCacheWarning
    from minilora.models import GPT, GPTConfig
    from minilora.peft import PeftModel
    from minilora.train import load_checkpoint

    tiny = GPTConfig(vocab_size=61, block_size=16, n_layer=2, n_head=2, n_embd=16)
    used = int(open("/proc/self/status").read().split("VmSize:")[1].split()[0]) * 1024
    limit = used + request["memory_mb"] * 2**20
    resource.setrlimit(resource.RLIMIT_AS, (limit, limit))

    def state(model):
        return ([(n, type(m).__name__) for n, m in model.named_modules()],
                [(n, p.data.copy()) for n, p in model.named_parameters()], sorted(model.peft_config))

    def same(a, b) -> bool:
        return a[0] == b[0] and a[2] == b[2] and len(a[1]) == len(b[1]) and all(
            n == m and np.array_equal(x, y, equal_nan=True) for (n, x), (m, y) in zip(a[1], b[1]))

    for i, job in enumerate(request["jobs"]):
        print(json.dumps({"i": i, "start": True}), flush=True)
        result = {"i": i, "outcome": "ok"}
        model = None
        try:
            if job["op"] == "gpt":
                GPT.from_pretrained(job["path"])
            elif job["op"] == "gpt16":
                GPT.from_pretrained(job["path"], dtype=np.float16)
            elif job["op"] == "run_cache":
                with warnings.catch_warnings():
                    warnings.simplefilter("error", RunCacheWarning)  # an entry it cannot use: refused
                    if RunCache(job["path"]).read(run_request(), run_spec()) is None:
                        raise AssertionError("the run cache did not find its entry")
            elif job["op"] == "verify_out":
                with io.replacing_output_folder(job["path"], "verify report") as staging:
                    (staging / "README.md").write_text("a report")
            elif job["op"] == "pretrain_out":
                io.claim_output_folder(job["path"], "pretrain run")
            elif job["op"] == "checkpoint":
                load_checkpoint(GPT(tiny), job["path"])
            elif job["op"] == "adapter":
                PeftModel.from_pretrained(GPT(tiny).eval(), job["path"])
            else:
                model = PeftModel.from_pretrained(GPT(tiny).eval(), job["good"])
                before = state(model)
                model.load_adapter(job["path"], "fuzz")
        except (LoadError, OutputFolderError, RunCacheWarning) as err:
            result.update(outcome="error", type=type(err).__name__, message=str(err))
            if model is not None:
                if not same(state(model), before):
                    result.update(outcome="broken", message="a failed load_adapter changed the model: " + str(err))
                else:
                    try:
                        model.load_adapter(job["good"], "fuzz")  # the retry under the same name
                    except BaseException as retry:  # noqa: BLE001 -- reported, whatever it is
                        result.update(outcome="broken", message=f"the retry failed: {type(retry).__name__}: {retry}")
        except OSError as err:  # an output folder's own refusal (a file where a folder goes), from the OS
            kind = "error" if job["op"].endswith("_out") else "broken"
            result.update(outcome=kind, type=type(err).__name__, message=str(err))
        except BaseException as err:  # noqa: BLE001 -- a PanicException is a BaseException; report it
            result.update(outcome="broken", type=type(err).__name__, message=traceback.format_exc()[-2000:])
        print(json.dumps(result), flush=True)
    sys.stdout.flush()
    os._exit(0)


if __name__ == "__main__":
    main()
