//! One connection to the fleet database, SQLite or PostgreSQL, behind the handful of calls
//! the fleet code makes: run a query and map its rows, execute a statement, run a script,
//! a transaction. The SQL is written once, in the subset both engines speak: `?N`
//! placeholders (rewritten to `$N` for PostgreSQL), `ON CONFLICT … DO UPDATE`, `RETURNING`,
//! `CASE` instead of summing booleans, `CAST(… AS BIGINT)` around sums. What differs is the
//! schema's DDL (`schema`), and a PostgreSQL `instr` function the schema defines so text
//! search reads the same on both.
//!
//! Values cross as [`Value`]: both engines' native types map onto its five variants, so
//! the fleet code reads `i64`, `String` or `Vec<u8>` whatever the engine.

use anyhow::{anyhow, bail, Context, Result};
use postgres::types::{to_sql_checked, IsNull, ToSql, Type};
use std::cell::RefCell;
use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Duration;

/// A value bound to a statement or read from a row.
#[derive(Debug, Clone, PartialEq)]
pub enum Value {
    Null,
    Int(i64),
    Real(f64),
    Text(String),
    Blob(Vec<u8>),
}

/// `values` as statement parameters (a filter built at run time).
pub fn params(values: &[Value]) -> Vec<&dyn Param> {
    values.iter().map(|v| v as &dyn Param).collect()
}

/// "No limit" for a `LIMIT ?` placeholder: SQLite takes -1 but PostgreSQL refuses a
/// negative limit; both take the largest integer.
pub const NO_LIMIT: i64 = i64::MAX;

/// What can be bound to a statement's placeholder.
pub trait Param {
    fn value(&self) -> Value;
}

impl Param for Value {
    fn value(&self) -> Value {
        self.clone()
    }
}
impl Param for i64 {
    fn value(&self) -> Value {
        Value::Int(*self)
    }
}
impl Param for u16 {
    fn value(&self) -> Value {
        Value::Int(i64::from(*self))
    }
}
impl Param for u32 {
    fn value(&self) -> Value {
        Value::Int(i64::from(*self))
    }
}
impl Param for f64 {
    fn value(&self) -> Value {
        Value::Real(*self)
    }
}
impl Param for bool {
    fn value(&self) -> Value {
        Value::Int(i64::from(*self))
    }
}
impl Param for str {
    fn value(&self) -> Value {
        Value::Text(self.to_string())
    }
}
impl Param for String {
    fn value(&self) -> Value {
        Value::Text(self.clone())
    }
}
impl Param for [u8] {
    fn value(&self) -> Value {
        Value::Blob(self.to_vec())
    }
}
impl Param for Vec<u8> {
    fn value(&self) -> Value {
        Value::Blob(self.clone())
    }
}
impl<const N: usize> Param for [u8; N] {
    fn value(&self) -> Value {
        Value::Blob(self.to_vec())
    }
}
impl<T: Param + ?Sized> Param for &T {
    fn value(&self) -> Value {
        (**self).value()
    }
}
impl<T: Param> Param for Option<T> {
    fn value(&self) -> Value {
        self.as_ref().map_or(Value::Null, Param::value)
    }
}

/// What a column can be read as.
pub trait FromValue: Sized {
    fn from_value(value: Value) -> Result<Self>;
}

impl FromValue for Value {
    fn from_value(value: Value) -> Result<Self> {
        Ok(value)
    }
}
impl FromValue for i64 {
    fn from_value(value: Value) -> Result<Self> {
        match value {
            Value::Int(v) => Ok(v),
            other => bail!("expected an integer, found {other:?}"),
        }
    }
}
impl FromValue for f64 {
    fn from_value(value: Value) -> Result<Self> {
        match value {
            Value::Real(v) => Ok(v),
            Value::Int(v) => Ok(v as f64),
            other => bail!("expected a number, found {other:?}"),
        }
    }
}
impl FromValue for String {
    fn from_value(value: Value) -> Result<Self> {
        match value {
            Value::Text(v) => Ok(v),
            other => bail!("expected text, found {other:?}"),
        }
    }
}
impl FromValue for Vec<u8> {
    fn from_value(value: Value) -> Result<Self> {
        match value {
            Value::Blob(v) => Ok(v),
            other => bail!("expected a blob, found {other:?}"),
        }
    }
}
impl FromValue for u32 {
    fn from_value(value: Value) -> Result<Self> {
        let v = i64::from_value(value)?;
        u32::try_from(v).map_err(|_| anyhow!("{v} is out of range for a 32-bit number"))
    }
}
impl FromValue for u16 {
    fn from_value(value: Value) -> Result<Self> {
        let v = i64::from_value(value)?;
        u16::try_from(v).map_err(|_| anyhow!("{v} is out of range for a 16-bit code"))
    }
}
impl<T: FromValue> FromValue for Option<T> {
    fn from_value(value: Value) -> Result<Self> {
        match value {
            Value::Null => Ok(None),
            v => T::from_value(v).map(Some),
        }
    }
}

/// One row of a result, read by column index.
pub enum Row<'a> {
    Sqlite(&'a rusqlite::Row<'a>),
    Postgres(&'a postgres::Row),
}

impl Row<'_> {
    pub fn get<T: FromValue>(&self, column: usize) -> Result<T> {
        T::from_value(self.value(column)?).with_context(|| format!("column {column}"))
    }

    fn value(&self, column: usize) -> Result<Value> {
        use rusqlite::types::ValueRef;
        Ok(match self {
            Row::Sqlite(row) => match row.get_ref(column)? {
                ValueRef::Null => Value::Null,
                ValueRef::Integer(v) => Value::Int(v),
                ValueRef::Real(v) => Value::Real(v),
                ValueRef::Text(v) => Value::Text(String::from_utf8(v.to_vec()).context("text is not UTF-8")?),
                ValueRef::Blob(v) => Value::Blob(v.to_vec()),
            },
            Row::Postgres(row) => pg_value(row, column)?,
        })
    }
}

fn pg_value(row: &postgres::Row, i: usize) -> Result<Value> {
    let ty = row.columns().get(i).ok_or_else(|| anyhow!("no column {i}"))?.type_().clone();
    let v = match ty {
        Type::INT8 => row.try_get::<_, Option<i64>>(i)?.map(Value::Int),
        Type::INT4 => row.try_get::<_, Option<i32>>(i)?.map(|v| Value::Int(v.into())),
        Type::INT2 => row.try_get::<_, Option<i16>>(i)?.map(|v| Value::Int(v.into())),
        Type::BOOL => row.try_get::<_, Option<bool>>(i)?.map(|v| Value::Int(v.into())),
        Type::FLOAT8 => row.try_get::<_, Option<f64>>(i)?.map(Value::Real),
        Type::FLOAT4 => row.try_get::<_, Option<f32>>(i)?.map(|v| Value::Real(v.into())),
        Type::TEXT | Type::VARCHAR | Type::NAME | Type::BPCHAR => row.try_get::<_, Option<String>>(i)?.map(Value::Text),
        Type::BYTEA => row.try_get::<_, Option<Vec<u8>>>(i)?.map(Value::Blob),
        other => bail!("column {i} has type {other}, which the fleet code does not read (cast it)"),
    };
    Ok(v.unwrap_or(Value::Null))
}

impl rusqlite::ToSql for Value {
    fn to_sql(&self) -> rusqlite::Result<rusqlite::types::ToSqlOutput<'_>> {
        use rusqlite::types::{ToSqlOutput, ValueRef};
        Ok(ToSqlOutput::Borrowed(match self {
            Value::Null => ValueRef::Null,
            Value::Int(v) => ValueRef::Integer(*v),
            Value::Real(v) => ValueRef::Real(*v),
            Value::Text(v) => ValueRef::Text(v.as_bytes()),
            Value::Blob(v) => ValueRef::Blob(v),
        }))
    }
}

/// PostgreSQL infers each placeholder's type from where it stands; a value is converted to
/// that type (an integer bound where an INT4 is expected must fit one).
impl ToSql for Value {
    fn to_sql(
        &self,
        ty: &Type,
        out: &mut bytes::BytesMut,
    ) -> std::result::Result<IsNull, Box<dyn std::error::Error + Sync + Send>> {
        match self {
            Value::Null => Ok(IsNull::Yes),
            Value::Int(v) => match *ty {
                Type::INT8 => v.to_sql(ty, out),
                Type::INT4 => i32::try_from(*v)?.to_sql(ty, out),
                Type::INT2 => i16::try_from(*v)?.to_sql(ty, out),
                Type::BOOL => (*v != 0).to_sql(ty, out),
                Type::FLOAT8 => (*v as f64).to_sql(ty, out),
                Type::FLOAT4 => (*v as f32).to_sql(ty, out),
                _ => v.to_string().as_str().to_sql(ty, out),
            },
            Value::Real(v) => match *ty {
                Type::FLOAT4 => (*v as f32).to_sql(ty, out),
                Type::FLOAT8 => v.to_sql(ty, out),
                _ => Err(format!("a real number bound where {ty} is expected").into()),
            },
            Value::Text(v) => v.as_str().to_sql(ty, out),
            Value::Blob(v) => v.as_slice().to_sql(ty, out),
        }
    }

    fn accepts(_: &Type) -> bool {
        true
    }

    to_sql_checked!();
}

/// Rewrites SQLite's placeholders (`?NNN`, and `?` meaning one more than the largest so
/// far) as PostgreSQL's `$NNN`, leaving quoted text alone.
pub fn postgres_placeholders(sql: &str) -> String {
    let mut out = String::with_capacity(sql.len() + 8);
    let (mut highest, mut chars) = (0u32, sql.chars().peekable());
    let mut quote: Option<char> = None;
    while let Some(c) = chars.next() {
        match (quote, c) {
            (Some(q), c) if c == q => {
                quote = None;
                out.push(c);
            }
            (Some(_), c) => out.push(c),
            (None, '\'' | '"') => {
                quote = Some(c);
                out.push(c);
            }
            (None, '?') => {
                let mut digits = String::new();
                while let Some(d) = chars.peek().filter(|d| d.is_ascii_digit()) {
                    digits.push(*d);
                    chars.next();
                }
                let n = if digits.is_empty() { highest + 1 } else { digits.parse().unwrap_or(u32::MAX) };
                highest = highest.max(n);
                out.push('$');
                out.push_str(&n.to_string());
            }
            (None, c) => out.push(c),
        }
    }
    out
}

/// A PostgreSQL connection and the statements it has prepared (each query's text is
/// prepared once per connection, as rusqlite's statement cache does).
pub struct PgConn {
    client: postgres::Client,
    statements: HashMap<String, postgres::Statement>,
}

impl PgConn {
    fn statement(&mut self, sql: &str) -> Result<postgres::Statement> {
        if let Some(s) = self.statements.get(sql) {
            return Ok(s.clone());
        }
        let prepared = self.client.prepare(&postgres_placeholders(sql)).map_err(pg_error)?;
        if self.statements.len() >= 256 {
            self.statements.clear();
        }
        self.statements.insert(sql.to_string(), prepared.clone());
        Ok(prepared)
    }
}

fn pg_error(e: postgres::Error) -> anyhow::Error {
    match e.as_db_error() {
        Some(db) => anyhow!("PostgreSQL: {} ({})", db.message(), db.code().code()),
        None => anyhow!("PostgreSQL: {e}"),
    }
}

/// The advisory lock every PostgreSQL write transaction holds ("otamesh" and a 3).
const FLEET_WRITE_LOCK: i64 = 0x6f74_616d_6573_6803;

/// Idle PostgreSQL connections by URL: an API request borrows one instead of paying for a
/// new server process per request.
static IDLE: Mutex<Vec<(String, Box<PgConn>)>> = Mutex::new(Vec::new());
const MAX_IDLE: usize = 16;

enum Engine {
    Sqlite(rusqlite::Connection),
    Postgres { url: String, conn: RefCell<Option<Box<PgConn>>> },
}

/// A connection to the fleet database.
pub struct Db {
    engine: Engine,
}

impl Db {
    pub fn sqlite(conn: rusqlite::Connection) -> Db {
        Db { engine: Engine::Sqlite(conn) }
    }

    /// Connects to PostgreSQL at `url`, reusing an idle connection when there is one.
    pub fn postgres(url: &str) -> Result<Db> {
        let idle = {
            let mut idle = IDLE.lock().unwrap_or_else(|e| e.into_inner());
            idle.iter().position(|(u, _)| u == url).map(|i| idle.swap_remove(i).1)
        };
        // An idle connection the server dropped (a restart, an idle timeout) is found out
        // here with one round trip, not by the caller's query failing.
        let idle = idle.filter(|c| !c.client.is_closed());
        let conn = match idle.map(|mut c| (c.client.is_valid(Duration::from_secs(2)).is_ok(), c)) {
            Some((true, c)) => c,
            _ => {
                let client = postgres::Client::connect(url, postgres::NoTls)
                    .map_err(|e| anyhow!("cannot connect to the fleet database {}: {e}", redact(url)))?;
                Box::new(PgConn { client, statements: HashMap::new() })
            }
        };
        Ok(Db { engine: Engine::Postgres { url: url.to_string(), conn: RefCell::new(Some(conn)) } })
    }

    /// Whether this is a PostgreSQL connection the server has closed (every query on it
    /// would fail): reconnect.
    pub fn is_broken(&self) -> bool {
        match &self.engine {
            Engine::Sqlite(_) => false,
            Engine::Postgres { conn, .. } => conn.borrow().as_ref().is_none_or(|c| c.client.is_closed()),
        }
    }

    pub fn is_postgres(&self) -> bool {
        matches!(self.engine, Engine::Postgres { .. })
    }

    /// The SQLite connection underneath, for what only SQLite has (pragmas).
    #[cfg(test)]
    pub fn as_sqlite(&self) -> Option<&rusqlite::Connection> {
        match &self.engine {
            Engine::Sqlite(c) => Some(c),
            Engine::Postgres { .. } => None,
        }
    }

    /// The SQLite connection itself, for bulk loading through rusqlite's own transactions.
    #[cfg(test)]
    pub fn into_sqlite(mut self) -> Option<rusqlite::Connection> {
        match std::mem::replace(&mut self.engine, Engine::Postgres { url: String::new(), conn: RefCell::new(None) }) {
            Engine::Sqlite(c) => Some(c),
            other => {
                self.engine = other;
                None
            }
        }
    }

    fn with_pg<T>(conn: &RefCell<Option<Box<PgConn>>>, f: impl FnOnce(&mut PgConn) -> Result<T>) -> Result<T> {
        let mut conn = conn.borrow_mut();
        f(conn.as_mut().ok_or_else(|| anyhow!("the PostgreSQL connection was closed"))?)
    }

    /// Runs `sql` with `params` and maps every row.
    pub fn query<T>(&self, sql: &str, params: &[&dyn Param], mut map: impl FnMut(&Row) -> Result<T>) -> Result<Vec<T>> {
        let values: Vec<Value> = params.iter().map(|p| p.value()).collect();
        let mut out = Vec::new();
        match &self.engine {
            Engine::Sqlite(c) => {
                let mut stmt = c.prepare_cached(sql)?;
                let mut rows = stmt.query(rusqlite::params_from_iter(values.iter()))?;
                while let Some(row) = rows.next()? {
                    out.push(map(&Row::Sqlite(row))?);
                }
            }
            Engine::Postgres { conn, .. } => {
                let rows = Self::with_pg(conn, |pg| {
                    let stmt = pg.statement(sql)?;
                    let refs: Vec<&(dyn ToSql + Sync)> = values.iter().map(|v| v as &(dyn ToSql + Sync)).collect();
                    pg.client.query(&stmt, &refs).map_err(pg_error)
                })?;
                for row in &rows {
                    out.push(map(&Row::Postgres(row))?);
                }
            }
        }
        Ok(out)
    }

    /// The first row `sql` returns, mapped; `None` if it returns none.
    pub fn query_opt<T>(
        &self,
        sql: &str,
        params: &[&dyn Param],
        map: impl FnOnce(&Row) -> Result<T>,
    ) -> Result<Option<T>> {
        let mut map = Some(map);
        let rows = self.query(sql, params, |row| match map.take() {
            Some(map) => map(row).map(Some),
            None => Ok(None),
        })?;
        Ok(rows.into_iter().next().flatten())
    }

    /// The one row `sql` returns (an aggregate, a lookup that must exist), mapped.
    pub fn query_one<T>(&self, sql: &str, params: &[&dyn Param], map: impl FnOnce(&Row) -> Result<T>) -> Result<T> {
        self.query_opt(sql, params, map)?.ok_or_else(|| anyhow!("the query returned no row"))
    }

    /// Executes one statement; the number of rows it changed.
    pub fn execute(&self, sql: &str, params: &[&dyn Param]) -> Result<u64> {
        let values: Vec<Value> = params.iter().map(|p| p.value()).collect();
        match &self.engine {
            Engine::Sqlite(c) => Ok(c.prepare_cached(sql)?.execute(rusqlite::params_from_iter(values.iter()))? as u64),
            Engine::Postgres { conn, .. } => Self::with_pg(conn, |pg| {
                let stmt = pg.statement(sql)?;
                let refs: Vec<&(dyn ToSql + Sync)> = values.iter().map(|v| v as &(dyn ToSql + Sync)).collect();
                pg.client.execute(&stmt, &refs).map_err(pg_error)
            }),
        }
    }

    /// Runs statements without parameters (DDL, transaction control).
    pub fn execute_batch(&self, sql: &str) -> Result<()> {
        match &self.engine {
            Engine::Sqlite(c) => Ok(c.execute_batch(sql)?),
            Engine::Postgres { conn, .. } => Self::with_pg(conn, |pg| pg.client.batch_execute(sql).map_err(pg_error)),
        }
    }

    /// Runs `work` in one transaction that holds the database's write lock from its start:
    /// committed if it returns `Ok`, rolled back otherwise.
    ///
    /// SQLite: `BEGIN IMMEDIATE`, so a read-then-write transaction waits its turn instead of
    /// failing when another process committed in between. PostgreSQL: a transaction-level
    /// advisory lock every writer of the fleet takes first, so writers (several replicas'
    /// ingestors, an operator's command) run one at a time as on SQLite. That keeps what the
    /// fleet code relies on: a report's replay check and its insert see no concurrent write,
    /// and ids are handed out in commit order, so a reader that follows a table by id (the
    /// rollout controller, the event stream) never skips a row that committed late.
    pub fn transaction<T>(&self, work: impl FnOnce(&Db) -> Result<T>) -> Result<T> {
        if self.is_postgres() {
            self.execute_batch("BEGIN")?;
            if let Err(e) = self.execute("SELECT pg_advisory_xact_lock(?1)", &[&FLEET_WRITE_LOCK]) {
                let _ = self.execute_batch("ROLLBACK");
                return Err(e);
            }
        } else {
            self.execute_batch("BEGIN IMMEDIATE")?;
        }
        match work(self) {
            Ok(v) => {
                if let Err(e) = self.execute_batch("COMMIT") {
                    let _ = self.execute_batch("ROLLBACK");
                    return Err(e);
                }
                Ok(v)
            }
            Err(e) => {
                let _ = self.execute_batch("ROLLBACK");
                Err(e)
            }
        }
    }
}

impl std::fmt::Debug for Db {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.engine {
            Engine::Sqlite(_) => f.write_str("Db(SQLite)"),
            Engine::Postgres { url, .. } => write!(f, "Db({})", redact(url)),
        }
    }
}

impl Drop for Db {
    /// Hands a healthy PostgreSQL connection back to the idle list. A connection left inside
    /// a transaction (a panic mid-way) is closed instead.
    fn drop(&mut self) {
        if let Engine::Postgres { url, conn } = &mut self.engine {
            if let Some(mut c) = conn.get_mut().take() {
                if c.client.is_closed() || c.client.batch_execute("ROLLBACK").is_err() {
                    return;
                }
                let mut idle = IDLE.lock().unwrap_or_else(|e| e.into_inner());
                if idle.len() < MAX_IDLE {
                    idle.push((std::mem::take(url), c));
                }
            }
        }
    }
}

/// `url` with any password replaced, for messages and logs.
pub fn redact(url: &str) -> String {
    match (url.find("://"), url.rfind('@')) {
        (Some(scheme), Some(at)) if at > scheme => {
            let userinfo = &url[scheme + 3..at];
            match userinfo.find(':') {
                Some(colon) => format!("{}{}:***{}", &url[..scheme + 3], &userinfo[..colon], &url[at..]),
                None => url.to_string(),
            }
        }
        _ => url.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn placeholders_are_rewritten_outside_quotes() {
        assert_eq!(postgres_placeholders("a = ?1 AND b = ?2 OR c = ?1"), "a = $1 AND b = $2 OR c = $1");
        assert_eq!(postgres_placeholders("a = ? AND b IN (?, ?)"), "a = $1 AND b IN ($2, $3)");
        assert_eq!(postgres_placeholders("a = ?3 AND b = ?"), "a = $3 AND b = $4");
        assert_eq!(postgres_placeholders("x = '?1' AND \"?\" = ?1"), "x = '?1' AND \"?\" = $1");
    }

    #[test]
    fn passwords_are_redacted() {
        assert_eq!(redact("postgres://fleet:s3cret@db:5432/otamesh"), "postgres://fleet:***@db:5432/otamesh");
        assert_eq!(redact("postgres://fleet@db/otamesh"), "postgres://fleet@db/otamesh");
        assert_eq!(redact("postgresql:///otamesh?host=/run/pg"), "postgresql:///otamesh?host=/run/pg");
    }

    #[test]
    fn sqlite_rows_read_as_values() {
        let db = Db::sqlite(rusqlite::Connection::open_in_memory().unwrap());
        db.execute_batch("CREATE TABLE t (i INTEGER, s TEXT, b BLOB)").unwrap();
        db.execute("INSERT INTO t VALUES (?1, ?2, ?3)", &[&7i64, &"seven", &[7u8; 2]]).unwrap();
        db.execute("INSERT INTO t VALUES (?1, ?2, ?3)", &[&None::<i64>, &None::<String>, &Value::Null]).unwrap();
        let rows = db
            .query("SELECT i, s, b FROM t ORDER BY i", &[], |r| {
                Ok((r.get::<Option<i64>>(0)?, r.get::<Option<String>>(1)?, r.get::<Option<Vec<u8>>>(2)?))
            })
            .unwrap();
        assert_eq!(rows, vec![(None, None, None), (Some(7), Some("seven".into()), Some(vec![7, 7]))]);
        let err = db.query_one("SELECT s FROM t WHERE i = 7", &[], |r| r.get::<i64>(0)).unwrap_err();
        assert!(format!("{err:#}").contains("expected an integer"), "{err:#}");
        assert_eq!(db.query_opt("SELECT i FROM t WHERE i = 8", &[], |r| r.get::<i64>(0)).unwrap(), None);
        let failed: Result<()> = db.transaction(|db| {
            db.execute("INSERT INTO t VALUES (1, 'one', NULL)", &[])?;
            bail!("no")
        });
        assert!(failed.is_err());
        assert_eq!(db.query_one("SELECT count(*) FROM t", &[], |r| r.get::<i64>(0)).unwrap(), 2, "rolled back");
    }
}
