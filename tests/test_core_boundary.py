"""The core library must import and work without the MLOps packages (GPU boxes have only torch)."""
import subprocess
import sys
import textwrap

BLOCKED = ["zenml", "mlflow", "dvc", "great_expectations", "kubernetes"]


def test_core_library_imports_no_mlops_package():
    # A meta-path finder that refuses the MLOps packages, then import every core module.
    code = textwrap.dedent(
        f"""
        import importlib, pkgutil, sys
        BLOCKED = {BLOCKED!r}
        class Refuse:
            def find_spec(self, name, path=None, target=None):
                if name.split(".")[0] in BLOCKED:
                    raise ImportError("core library imported " + name)
                return None
        sys.meta_path.insert(0, Refuse())
        import dtkd
        for mod in pkgutil.walk_packages(dtkd.__path__, "dtkd."):
            importlib.import_module(mod.name)
        loaded = sorted({{m.split(".")[0] for m in sys.modules}} & set(BLOCKED))
        assert not loaded, loaded
        print("ok")
        """
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    assert out.stdout.strip().endswith("ok")
