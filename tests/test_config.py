"""Config loader: the file format of DESIGN.md section 3, strict keys, ${VAR} interpolation, clear errors."""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest

from src.common.errors import ConfigError
from src.common.secret import Secret
from src.config.interp import interpolate
from src.config.loader import config_dir, load_pipeline

CONNECTIONS = """
connections:
  sources:
    shop_mysql: {host: 127.0.0.1, port: 3306, username: root, password: "${T_MYSQL_PASSWORD:-}",
                 database: shop, max_connections: 8}
  targets:
    local_pg: {type: postgres, host: 127.0.0.1, port: 5432, username: postgres, database: test,
               schema: analytics}
    prod_rs:  {type: redshift, host: "${T_RS_HOST}", port: 5439, username: loader,
               password: "${T_RS_PASSWORD}", database: dw, schema: public, iam_role: "${T_RS_ROLE}"}
  s3:
    stage: {bucket: s3shift-stage, prefix: staging/, region: us-east-1,
            endpoint_url: "${T_S3_ENDPOINT_URL:-}"}
"""
NIGHTLY = """
pipeline: {name: nightly, source: shop_mysql, target: local_pg, s3_config: stage,
           processing: {max_parallel_tables: 8, batch_size: 50000}}
tables:
  shop.orders: {cdc_strategy: full, cdc_timestamp_column: updated_at, cdc_id_column: id}
  shop.customers: {cdc_strategy: full_sync, target_name: dim_customers}
"""


def write(tmp_path: Path, connections: str = CONNECTIONS, **pipelines: str) -> Path:
    (tmp_path / "pipelines").mkdir(exist_ok=True)
    (tmp_path / "connections.yml").write_text(textwrap.dedent(connections))
    for name, text in (pipelines or {"nightly": NIGHTLY}).items():
        (tmp_path / "pipelines" / f"{name}.yml").write_text(textwrap.dedent(text))
    return tmp_path


def test_design_example_loads(tmp_path: Path) -> None:
    p = load_pipeline(write(tmp_path), "nightly")
    assert p.name == "nightly"
    assert (p.source.name, p.source.host, p.source.port, p.source.database) == (
        "shop_mysql",
        "127.0.0.1",
        3306,
        "shop",
    )
    assert p.source.max_connections == 8 and p.source.driver == "asyncmy"
    assert (p.target.type, p.target.schema, p.target.port) == ("postgres", "analytics", 5432)
    assert (p.s3.bucket, p.s3.prefix, p.s3.endpoint_url) == ("s3shift-stage", "staging/", None)
    assert p.processing.max_parallel_tables == 8
    assert p.table("shop.orders").cdc_strategy == "full_sync"
    assert p.table("shop.customers").target_table == "dim_customers"
    assert p.table("shop.orders").target_table == "orders"
    other = p.table("shop.unlisted")
    assert other.name == "shop.unlisted" and other.batch_size == 50000


def test_unused_connections_need_no_environment(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("T_RS_HOST", raising=False)
    load_pipeline(write(tmp_path), "nightly")  # prod_rs references unset vars but is not used


def test_env_interpolation_and_secrets(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("T_RS_HOST", "rs.example.internal")
    monkeypatch.setenv("T_RS_PASSWORD", "pw-Very-Secret-1")
    monkeypatch.setenv("T_RS_ROLE", "arn:aws:iam::123456789012:role/copy")
    pipe = NIGHTLY.replace("target: local_pg", "target: prod_rs")
    p = load_pipeline(write(tmp_path, nightly=pipe), "nightly")
    assert p.target.host == "rs.example.internal" and p.target.port == 5439
    assert isinstance(p.target.password, Secret)
    assert p.target.password.reveal() == "pw-Very-Secret-1"
    assert "pw-Very-Secret-1" not in repr(p) and "pw-Very-Secret-1" not in str(p.target)


def test_scrub_replaces_secrets_and_spares_words_holding_a_short_one() -> None:
    from src.common.secret import scrub

    Secret("tst9")  # a short local key: a word of its own or between punctuation only
    Secret("Long-Secret-Value-0x99")  # anywhere, even inside a longer word
    text = "la-tst9 tst9: the latst9s at 127.0.0.1:5432/tst9 user:tst9@h; xLong-Secret-Value-0x99y"
    assert scrub(text) == "la-*** ***: the latst9s at 127.0.0.1:5432/*** user:***@h; x***y"


def test_missing_env_var_names_file_key_and_variable(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("T_RS_HOST", raising=False)
    pipe = NIGHTLY.replace("target: local_pg", "target: prod_rs")
    with pytest.raises(ConfigError) as err:
        load_pipeline(write(tmp_path, nightly=pipe), "nightly")
    msg = str(err.value)
    assert "connections.yml" in msg and "connections.targets.prod_rs.host" in msg and "T_RS_HOST" in msg


def test_interpolate_forms() -> None:
    env = {"A": "x", "EMPTY": ""}
    assert interpolate("${A}-${B:-dflt}-${EMPTY:-z}", where="w", env=env) == "x-dflt-"
    assert interpolate("$${A} ${A}", where="w", env=env) == "${A} x"


@pytest.mark.parametrize(
    ("section", "old", "new", "expect"),
    [
        (
            "connections",
            "max_connections: 8",
            "max_conections: 8",
            "connections.sources.shop_mysql.max_conections",
        ),
        ("connections", "prefix: staging/", "prefx: staging/", "did you mean 'prefix'"),
        ("pipeline", "batch_size: 50000}", "batchsize: 50000}", "pipeline.processing.batchsize"),
        (
            "pipeline",
            "target_name: dim_customers",
            "target_nme: dim_customers",
            "tables.shop.customers.target_nme",
        ),
    ],
)
def test_unknown_keys_are_errors(tmp_path: Path, section: str, old: str, new: str, expect: str) -> None:
    conns = CONNECTIONS.replace(old, new) if section == "connections" else CONNECTIONS
    pipe = NIGHTLY.replace(old, new) if section == "pipeline" else NIGHTLY
    assert conns != CONNECTIONS or pipe != NIGHTLY
    with pytest.raises(ConfigError) as err:
        load_pipeline(write(tmp_path, conns, nightly=pipe), "nightly")
    assert expect in str(err.value)
    assert ("connections.yml" if section == "connections" else "nightly.yml") in str(err.value)


def test_missing_reference(tmp_path: Path) -> None:
    pipe = NIGHTLY.replace("source: shop_mysql", "source: nope")
    with pytest.raises(ConfigError, match=r"pipeline.source 'nope' is not defined under connections.sources"):
        load_pipeline(write(tmp_path, nightly=pipe), "nightly")


def test_unknown_pipeline_lists_known(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"pipeline 'nope' not found.*known pipelines: nightly"):
        load_pipeline(write(tmp_path), "nope")


def test_missing_connections_file(tmp_path: Path) -> None:
    write(tmp_path)
    (tmp_path / "connections.yml").unlink()
    with pytest.raises(ConfigError, match=r"connections.yml not found"):
        load_pipeline(tmp_path, "nightly")


def test_bad_yaml_names_line(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"nightly.yml: invalid YAML at line \d+"):
        load_pipeline(write(tmp_path, nightly="pipeline: {name: nightly\ntables: [\n"), "nightly")


@pytest.mark.parametrize(
    ("old", "new", "expect"),
    [
        ("cdc_strategy: full_sync", "cdc_strategy: snapshot", "cdc_strategy' must be one of"),
        ("shop.customers:", "customers:", "must be written as database.table"),
        ("shop.customers:", "shop.cust.omers:", r"more than one dot.*CREATE VIEW `shop`.`cust_omers` AS"),
        ("name: nightly", "name: other", "pipeline.name is 'other'"),
        ("max_parallel_tables: 8", "max_parallel_tables: zero", "must be an integer"),
        ("max_parallel_tables: 8", "max_parallel_tables: 0", "must be a positive integer"),
    ],
)
def test_bad_values(tmp_path: Path, old: str, new: str, expect: str) -> None:
    with pytest.raises(ConfigError, match=expect):
        load_pipeline(write(tmp_path, nightly=NIGHTLY.replace(old, new)), "nightly")


def test_strategy_short_forms(tmp_path: Path) -> None:
    pipe = NIGHTLY + "  shop.a: {cdc_strategy: timestamp}\n  shop.b: {cdc_strategy: id}\n"
    p = load_pipeline(write(tmp_path, nightly=pipe), "nightly")
    assert p.table("shop.a").cdc_strategy == "timestamp_only"
    assert p.table("shop.b").cdc_strategy == "id_only"


def test_target_lock_timeout(tmp_path: Path) -> None:
    assert load_pipeline(write(tmp_path), "nightly").target.lock_timeout == 300
    conns = CONNECTIONS.replace("schema: analytics}", "schema: analytics, lock_timeout: 2.5}")
    assert load_pipeline(write(tmp_path, conns), "nightly").target.lock_timeout == 2.5
    with pytest.raises(
        ConfigError, match=r"local_pg.lock_timeout' must be zero \(no limit\) or more seconds"
    ):
        load_pipeline(write(tmp_path, conns.replace("2.5", "-1")), "nightly")


def test_target_read_timeout(tmp_path: Path) -> None:
    assert load_pipeline(write(tmp_path), "nightly").target.read_timeout == 60
    conns = CONNECTIONS.replace("schema: analytics}", "schema: analytics, read_timeout: 5}")
    assert load_pipeline(write(tmp_path, conns), "nightly").target.read_timeout == 5
    with pytest.raises(ConfigError, match=r"local_pg.read_timeout' must be more than zero seconds"):
        load_pipeline(write(tmp_path, conns.replace("read_timeout: 5", "read_timeout: 0")), "nightly")


def test_s3_max_attempts(tmp_path: Path) -> None:
    assert load_pipeline(write(tmp_path), "nightly").s3.max_attempts == 5
    conns = CONNECTIONS.replace("prefix: staging/,", "prefix: staging/, max_attempts: 2,")
    assert load_pipeline(write(tmp_path, conns), "nightly").s3.max_attempts == 2
    with pytest.raises(ConfigError, match=r"stage.max_attempts' must be a positive integer"):
        load_pipeline(write(tmp_path, conns.replace("max_attempts: 2", "max_attempts: 0")), "nightly")


def test_port_from_env_is_converted(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("T_PORT", "3307")
    conns = CONNECTIONS.replace("port: 3306", 'port: "${T_PORT}"')
    assert load_pipeline(write(tmp_path, conns), "nightly").source.port == 3307


def test_config_dir_resolution(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("S3SHIFT_CONFIG_DIR", raising=False)
    assert config_dir(None) == Path("config")
    monkeypatch.setenv("S3SHIFT_CONFIG_DIR", "/etc/s3shift")
    assert config_dir(None) == Path("/etc/s3shift")
    assert config_dir("/x") == Path("/x")


def test_demo_config_in_repo_loads() -> None:
    root = Path(__file__).resolve().parent.parent / "config"
    if not (root / "pipelines" / "demo.yml").exists():
        pytest.fail("config/pipelines/demo.yml is missing")
    p = load_pipeline(root, "demo")
    assert p.name == "demo"


def test_type_policies_selection_filter_and_physical_design(tmp_path: Path) -> None:
    pipe = NIGHTLY + (
        "  shop.t:\n"
        "    type_policies: {zero_date: fail, long_text: truncate}\n"
        "    include_columns: [id, name]\n"
        "    rename_columns: {name: full_name}\n"
        "    additional_where: \"region = 'eu'\"\n"
        "    diststyle: key\n"
        "    distkey: id\n"
        "    sortkey: [id]\n"
        "    encode: {full_name: zstd}\n"
        "    lag_seconds: 1.5\n"
    )
    t = load_pipeline(write(tmp_path, nightly=pipe), "nightly").table("shop.t")
    assert (t.type_policies.zero_date, t.type_policies.long_text, t.type_policies.decimal_overflow) == (
        "fail",
        "truncate",
        "fail",
    )
    assert t.columns.include == ("id", "name") and t.columns.rename == (("name", "full_name"),)
    assert t.where == "region = 'eu'" and t.lag_seconds == 1.5
    assert (t.diststyle, t.distkey, t.sortkey, t.encode) == ("KEY", "id", ("id",), (("full_name", "ZSTD"),))


def test_type_policies_from_env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A policy can be switched from the environment, like any other value (e.g. a one-off rebuild)."""
    pipe = NIGHTLY + '  shop.t: {type_policies: {schema_change: "${T_SCHEMA_CHANGE:-fail}"}}\n'

    def policy() -> str:
        return (
            load_pipeline(write(tmp_path, nightly=pipe), "nightly")
            .table("shop.t")
            .type_policies.schema_change
        )

    monkeypatch.delenv("T_SCHEMA_CHANGE", raising=False)
    assert policy() == "fail"
    monkeypatch.setenv("T_SCHEMA_CHANGE", "rebuild")
    assert policy() == "rebuild"
    monkeypatch.setenv("T_SCHEMA_CHANGE", "drop")
    with pytest.raises(ConfigError, match=r"schema_change' must be one of fail, rebuild \(got 'drop'\)"):
        policy()


def test_lists_and_column_maps_are_interpolated_too(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Every value may reference the environment (DESIGN.md section 3), the items of a list and the values
    of a column map included; their keys are column names, taken as written; ``$${`` stays literal."""
    pipe = NIGHTLY + (
        "  shop.t:\n"
        '    primary_key: ["${T_KEY}"]\n'
        '    include_columns: ["${T_KEY}", name, "${T_EXTRA:-note}", "$${lit}"]\n'
        '    exclude_columns: ["${T_EXTRA:-note}"]\n'
        '    rename_columns: {name: "${T_RENAMED}", "${T_KEY}": id2}\n'
        '    sortkey: ["${T_KEY}"]\n'
        '    encode: {name: "${T_CODEC:-zstd}"}\n'
    )
    monkeypatch.setenv("T_KEY", "order_id")
    monkeypatch.setenv("T_RENAMED", "full_name")
    t = load_pipeline(write(tmp_path, nightly=pipe), "nightly").table("shop.t")
    assert t.primary_key == ("order_id",) and t.sortkey == ("order_id",) and t.encode == (("name", "ZSTD"),)
    assert t.columns.include == ("order_id", "name", "note", "${lit}") and t.columns.exclude == ("note",)
    assert t.columns.rename == (("name", "full_name"), ("${T_KEY}", "id2"))
    monkeypatch.delenv("T_RENAMED")
    with pytest.raises(
        ConfigError, match=r"tables\.shop\.t\.rename_columns\.name: environment variable T_RENAMED"
    ):
        load_pipeline(write(tmp_path, nightly=pipe), "nightly")


@pytest.mark.parametrize(
    ("entry", "expect"),
    [
        ("type_policies: {zero_date: maybe}", "type_policies.zero_date' must be one of null, fail"),
        ("type_policies: {zero_dates: null}", "did you mean 'zero_date'"),
        ("diststyle: random", "diststyle' must be AUTO, EVEN, ALL or KEY"),
        ("{where: a, additional_where: b}", "sets both where and additional_where"),
        ("lag_seconds: -1", "lag_seconds' must be from 0 to 3153600000 seconds"),
    ],
)
def test_bad_table_keys(tmp_path: Path, entry: str, expect: str) -> None:
    body = entry if entry.startswith("{") else "{" + entry + "}"
    with pytest.raises(ConfigError, match=expect):
        load_pipeline(write(tmp_path, nightly=NIGHTLY + f"  shop.t: {body}\n"), "nightly")


@pytest.mark.parametrize(("old", "new"), [("port: 3306", "port: 70000"), ("port: 5432", "port: 65536")])
def test_port_out_of_range_names_file_and_key(tmp_path: Path, old: str, new: str) -> None:
    with pytest.raises(ConfigError, match=r"connections.yml: '.*\.port' must be a TCP port from 1 to 65535"):
        load_pipeline(write(tmp_path, CONNECTIONS.replace(old, new)), "nightly")


@pytest.mark.parametrize("text", ["${T_PW", "x${}y", "${BAD-NAME}", "${1ABC}"])
def test_malformed_reference_is_an_error_not_literal_text(tmp_path: Path, text: str) -> None:
    with pytest.raises(ConfigError, match=r"starts no environment reference") as err:
        interpolate(text, where="f: k", env={"T_PW": "x"})
    assert text not in str(err.value)  # a password could be the value: never echoed
    conns = CONNECTIONS.replace('password: "${T_MYSQL_PASSWORD:-}"', f'password: "pw{text}"')
    with pytest.raises(
        ConfigError, match=r"connections.yml: connections.sources.shop_mysql.password: '\$\{'"
    ):
        load_pipeline(write(tmp_path, conns), "nightly")
    escaped = text.replace("${", "$${")  # the same text, escaped: taken literally
    assert interpolate(escaped, where="w", env={}) == text


@pytest.mark.parametrize("env", [{}, {"T_PW": "secret"}])
def test_a_reference_nested_in_a_default_is_an_error(env: dict[str, str]) -> None:
    """Shell-style ``${A:-${B}}`` was read as A with the default "${B" and then a literal "}": the value was
    "secret}" with A set, the literal text "${B}" without, silently (a wrong password or target name)."""
    for text in ("${T_PW:-${T_OTHER}}", "pw${T_PW:-a${T_OTHER:-b}}"):
        with pytest.raises(ConfigError, match=r"^w: the default of \$\{T_PW:-\.\.\.\} holds a '\$\{'") as err:
            interpolate(text, where="w", env={**env, "T_OTHER": "other"})
        assert "secret" not in str(err.value)
    assert interpolate("${T_PW:-$${T_OTHER}}", where="w", env={}) == "${T_OTHER}"  # escaped: literal


def test_duplicate_keys_are_errors(tmp_path: Path) -> None:
    pipe = NIGHTLY + "  shop.orders: {cdc_strategy: id_only}\n"
    with pytest.raises(
        ConfigError, match=r"nightly.yml: invalid YAML at line 7.*'shop.orders' is given twice"
    ):
        load_pipeline(write(tmp_path, nightly=pipe), "nightly")
    conns = CONNECTIONS.replace("port: 3306,", "port: 3306, port: 3307,")
    with pytest.raises(ConfigError, match=r"connections.yml: .*'port' is given twice"):
        load_pipeline(write(tmp_path, conns), "nightly")


def test_merge_keys_may_override(tmp_path: Path) -> None:
    pipe = NIGHTLY.replace("shop.orders: {", "shop.orders: &base {").replace(
        "shop.customers: {cdc_strategy: full_sync,", "shop.customers: {<<: *base, cdc_strategy: full_sync,"
    )
    p = load_pipeline(write(tmp_path, nightly=pipe), "nightly")
    assert p.table("shop.customers").cdc_strategy == "full_sync"  # overrides the merged "full"
    assert p.table("shop.customers").target_table == "dim_customers"


def test_missing_config_dir_is_named(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"config directory .*nowhere not found; pass --config-dir"):
        load_pipeline(tmp_path / "nowhere", "nightly")


@pytest.mark.parametrize(
    ("section", "old", "new", "expect"),
    [
        # a value of the wrong kind: an error naming file and key, never truncated, coerced or a crash
        (
            "connections",
            "port: 3306,",
            "port: 3306.5,",
            r"sources.shop_mysql.port' must be an integer \(got '3306.5'",
        ),
        (
            "connections",
            "max_connections: 8}",
            "max_connections: 2.9}",
            r"max_connections' must be an integer",
        ),
        ("pipeline", "batch_size: 50000}", "batch_size: 0.5}", r"processing.batch_size' must be an integer"),
        (
            "connections",
            "max_connections: 8}",
            "max_connections: 8, connect_timeout: true}",
            r"connect_timeout' must be a finite number",
        ),
        (
            "connections",
            "max_connections: 8}",
            "max_connections: 8, read_timeout: .nan}",
            r"read_timeout' must be a finite number",
        ),
        (
            "connections",
            "schema: analytics}",
            "schema: analytics, lock_timeout: .inf}",
            r"lock_timeout' must be a finite number",
        ),
        (
            "pipeline",
            "cdc_id_column: id}",
            "cdc_id_column: id, lag_seconds: .nan}",
            r"shop.orders.lag_seconds' must be a finite",
        ),
        (
            "connections",
            "max_connections: 8}",
            "max_connections: 8, connect_timeout: 0}",
            r"connect_timeout' must be more than zero seconds",
        ),
        (
            "connections",
            "schema: analytics}",
            "schema: analytics, connect_timeout: -1}",
            r"local_pg.connect_timeout' must be more than zero",
        ),
        (
            "connections",
            "max_connections: 8}",
            "max_connections: 8, read_timeout: -5}",
            r"read_timeout' must be more than zero",
        ),
        (
            "pipeline",
            "target_name: dim_customers}",
            "rename_columns: {name: [1]}}",
            r"customers.rename_columns' must hold names, not \['1'\]",
        ),
        (
            "pipeline",
            "target_name: dim_customers}",
            "include_columns: [id, {a: 1}]}",
            r"include_columns' must hold names",
        ),
        (
            "pipeline",
            "target_name: dim_customers}",
            "encode: {id: [zstd]}}",
            r"customers.encode' must hold names",
        ),
        (
            "pipeline",
            "source: shop_mysql",
            "source: [shop_mysql]",
            r"nightly.yml: 'pipeline.source' must be a single value",
        ),
        (
            "pipeline",
            "target: local_pg",
            "target: {local_pg: 1}",
            r"nightly.yml: 'pipeline.target' must be a single value",
        ),
        (
            "connections",
            "max_connections: 8}",
            "max_connections: 8, ssh_tunnel: {enabled: flase}}",
            r"ssh_tunnel.enabled' must be a bool",
        ),
    ],
)
def test_wrong_value_types_name_file_and_key(
    tmp_path: Path, section: str, old: str, new: str, expect: str
) -> None:
    conns = CONNECTIONS.replace(old, new) if section == "connections" else CONNECTIONS
    pipe = NIGHTLY.replace(old, new) if section == "pipeline" else NIGHTLY
    assert conns != CONNECTIONS or pipe != NIGHTLY
    with pytest.raises(ConfigError, match=expect) as err:
        load_pipeline(write(tmp_path, conns, nightly=pipe), "nightly")
    assert ("connections.yml" if section == "connections" else "nightly.yml") in str(err.value)


def test_integral_numbers_and_numeric_names_still_load(tmp_path: Path) -> None:
    conns = CONNECTIONS.replace("port: 3306,", "port: 3306.0,").replace("database: shop,", "database: 2024,")
    pipe = NIGHTLY.replace("target_name: dim_customers}", "target_name: dim_customers, sortkey: [id, 2024]}")
    p = load_pipeline(write(tmp_path, conns, nightly=pipe), "nightly")
    assert (p.source.port, p.source.database) == (3306, "2024")
    assert p.table("shop.customers").sortkey == ("id", "2024")


def test_connection_names_of_a_pipeline_read_the_environment(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Any value may reference the environment: the connection names a pipeline picks too (one file for
    staging and production), and its name."""
    pipe = NIGHTLY.replace("target: local_pg", 'target: "${T_TARGET:-local_pg}"').replace(
        "name: nightly", 'name: "${T_NAME:-nightly}"'
    )
    monkeypatch.delenv("T_TARGET", raising=False)
    monkeypatch.delenv("T_NAME", raising=False)
    assert load_pipeline(write(tmp_path, nightly=pipe), "nightly").target.name == "local_pg"
    monkeypatch.setenv("T_TARGET", "prod_rs")
    monkeypatch.setenv("T_RS_HOST", "rs.example.internal")
    monkeypatch.setenv("T_RS_PASSWORD", "pw")
    monkeypatch.setenv("T_RS_ROLE", "arn:aws:iam::123456789012:role/copy")
    assert load_pipeline(write(tmp_path, nightly=pipe), "nightly").target.name == "prod_rs"


def test_a_config_file_that_is_not_utf8_is_named(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A pipeline file saved as Latin-1 (a comment with "é"): an internal error (UnicodeDecodeError) that
    named no file; now the file, the line and what to do."""
    for name in ("T_RS_HOST", "T_RS_PASSWORD", "T_RS_ROLE"):
        monkeypatch.setenv(name, "x")
    cfg = write(tmp_path)
    (cfg / "pipelines" / "nightly.yml").write_bytes(NIGHTLY.encode() + "# caf\xe9\n".encode("latin-1"))
    with pytest.raises(ConfigError) as caught:
        load_pipeline(cfg, "nightly")
    message = caught.value.message
    assert "nightly.yml" in message and "not UTF-8" in message and "line 7" in message, message


def test_range_workers_zero_is_auto_and_a_negative_is_refused(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from src.engine.reading import range_workers

    for name in ("T_RS_HOST", "T_RS_PASSWORD", "T_RS_ROLE"):
        monkeypatch.setenv(name, "x")
    auto = NIGHTLY.replace("batch_size: 50000}", "batch_size: 50000, range_workers: 0}")
    assert load_pipeline(write(tmp_path, nightly=auto), "nightly").processing.range_workers == 0
    bad = NIGHTLY.replace("batch_size: 50000}", "batch_size: 50000, range_workers: -1}")
    with pytest.raises(ConfigError, match=r"'pipeline.processing.range_workers' must be 0 \(3 connections"):
        load_pipeline(write(tmp_path, nightly=bad), "nightly")
    # auto: 3 while every table read at once has room for 3 beside its pooled connection, else 2
    assert [range_workers(0, 8, n) for n in (1, 2, 3, 8)] == [3, 3, 2, 2]
    assert range_workers(0, 4, 1) == 3 and range_workers(0, 3, 1) == 2  # a worker process's share
    assert range_workers(4, 8, 8) == 4  # as configured


def test_lookback_on_an_id_only_table_is_refused(tmp_path: Path) -> None:
    """lookback_seconds re-reads time before the watermark; an id_only cursor is a number, so the key was
    silently ignored there. Refused, naming the pipeline, table and key, whether the table sets it or
    inherits it from default_table_config; 0 (or a strategy with a timestamp) is fine."""
    own = NIGHTLY + "  shop.ids: {cdc_strategy: id_only, lookback_seconds: 60}\n"
    with pytest.raises(ConfigError) as info:
        load_pipeline(write(tmp_path, nightly=own), "nightly")
    assert str(info.value) == (
        f"{tmp_path}/pipelines/nightly.yml: pipeline 'nightly', 'tables.shop.ids' sets lookback_seconds 60, "
        "but its cdc_strategy id_only reads by a numeric id, which has no time to look back over — set "
        "tables.shop.ids.lookback_seconds to 0, or use cdc_strategy hybrid (a timestamp and the id) to "
        "re-read late commits"
    )
    assert info.value.key == "tables.shop.ids.lookback_seconds" and "\n" not in str(info.value)
    defaults = NIGHTLY.replace(
        "processing: {max_parallel_tables: 8, batch_size: 50000}}",
        "processing: {max_parallel_tables: 8, batch_size: 50000},\n"
        "           default_table_config: {lookback_seconds: 30}}",
    )
    with pytest.raises(
        ConfigError, match=r"'tables\.shop\.ids' inherits lookback_seconds 30 from pipeline\.default"
    ):
        load_pipeline(write(tmp_path, nightly=defaults + "  shop.ids: {cdc_strategy: id}\n"), "nightly")
    fine = (
        defaults + "  shop.ids: {cdc_strategy: id, lookback_seconds: 0}\n  shop.h: {cdc_strategy: hybrid}\n"
    )
    p = load_pipeline(write(tmp_path, nightly=fine), "nightly")
    assert p.table("shop.ids").lookback_seconds == 0 and p.table("shop.h").lookback_seconds == 30
