"""The one layout pyproject.toml cannot declare: the Hydra configs in `conf/` (kept at the repository root for
editing) install as the package folder `harness/conf`, every YAML under it included, so that an installed
`dllm-harness` finds them from any working directory. Everything else is declared in pyproject.toml."""
from setuptools import find_namespace_packages, setup

CODE = find_namespace_packages(include=["harness*", "analysis*", "hydra_plugins*"], exclude=["harness.assets*"])

setup(packages=[*CODE, "harness.conf"], package_dir={"harness.conf": "conf"},
      package_data={"harness": ["assets/**/*", "**/*.yaml"], "harness.conf": ["**/*.yaml"]})
