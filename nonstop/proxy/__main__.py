"""``python -m nonstop.proxy ...``: the same command as ``nonstop proxy``."""

from nonstop.proxy.command import proxy

if __name__ == "__main__":
    proxy(prog_name="nonstop proxy")
