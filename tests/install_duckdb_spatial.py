"""Install DuckDB's spatial extension from the duckdb-extension-spatial wheel (offline).

bqemulator loads ``spatial`` at start-up and would otherwise download it. The wheel ships
the extension built for the pinned duckdb; this copies it into DuckDB's extension folder
(``~/.duckdb/extensions/<version>/<platform>/``). Run by ``make`` after installing the
test extras; running it again changes nothing.
"""
from __future__ import annotations

import sys
from importlib import resources


def install() -> str:
    import duckdb
    version = f"v{duckdb.__version__}"
    wheel = resources.files("duckdb_extension_spatial").joinpath(
        "extensions", version, "spatial.duckdb_extension")
    if not wheel.is_file():
        raise SystemExit(f"duckdb-extension-spatial has no build for duckdb {version}: pin "
                         "both at the same version in constraints.txt")
    con = duckdb.connect()
    con.execute(f"INSTALL '{wheel}'")
    con.execute("LOAD spatial")
    return con.execute("SELECT install_path FROM duckdb_extensions() "
                       "WHERE extension_name = 'spatial'").fetchone()[0]


if __name__ == "__main__":
    print(f"duckdb spatial extension installed: {install()}")
    sys.exit(0)
