//! A private PostgreSQL cluster starts, serves SQL over TCP, and is gone after drop.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::net::{Ipv4Addr, TcpStream};
use std::process::Command;

use vmattest_testkit::Postgres;

fn psql(pg: &Postgres, db: &str, sql: &str) -> String {
    let out = Command::new(pg.bin_dir().join("psql"))
        .args(["-X", "-q", "-tA", "-v", "ON_ERROR_STOP=1"])
        .arg("-d")
        .arg(pg.url_for(db))
        .arg("-c")
        .arg(sql)
        .output()
        .expect("run psql");
    assert!(
        out.status.success(),
        "psql: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap().trim().to_string()
}

#[test]
fn starts_serves_and_stops() {
    assert!(
        Postgres::available(),
        "PostgreSQL server binaries not found (scripts/install-deps.sh installs them)"
    );
    let pg = Postgres::start().unwrap();
    let port = pg.port();
    assert_eq!(
        pg.url(),
        format!("postgres://vmattest@127.0.0.1:{port}/vmattest")
    );
    assert_eq!(psql(&pg, "vmattest", "select 1 + 1"), "2");
    assert_eq!(psql(&pg, "vmattest", "select current_user"), "vmattest");
    assert!(psql(&pg, "vmattest", "show server_version").starts_with(char::is_numeric));

    let url = pg.create_database("extra_db").unwrap();
    assert!(url.ends_with(&format!(":{port}/extra_db")));
    psql(
        &pg,
        "extra_db",
        "create table t (x int); insert into t values (7)",
    );
    assert_eq!(psql(&pg, "extra_db", "select x from t"), "7");
    assert!(pg.create_database("Bad-Name").is_err());

    // A second cluster runs beside the first on its own port.
    let other = Postgres::start().unwrap();
    assert_ne!(other.port(), port);
    assert_eq!(
        psql(
            &other,
            "vmattest",
            "select count(*) from pg_database where datname = 'extra_db'"
        ),
        "0"
    );
    drop(other);

    assert!(TcpStream::connect((Ipv4Addr::LOCALHOST, port)).is_ok());
    drop(pg);
    assert!(
        TcpStream::connect((Ipv4Addr::LOCALHOST, port)).is_err(),
        "port {port} still accepts after drop"
    );
}
