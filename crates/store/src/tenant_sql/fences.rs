//! Keeps the engine from folding one query level into another.
//!
//! Both engines inline a `WITH` query used once, and pull a subquery in
//! `FROM` up into the query around it, substituting its expressions where
//! they are used. A chain of levels that each use a column twice (`x + x`)
//! thus doubles the expression per level: 13 levels made PostgreSQL compile
//! for a minute past its limit, 20 took 3 GB of planner memory, and SQLite
//! 400 MB in a prepare that no progress handler interrupts — all from about
//! 150 tokens. So every `WITH` query is run `MATERIALIZED` and every
//! derived table gets `OFFSET 0` (the fence both engines honour), inserted
//! into the text as written, between its tokens. A query this cannot fence
//! is refused, never run unfenced.

use std::ops::ControlFlow;

use sqlparser::ast::{
    CteAsMaterialized, LimitClause, Query, Spanned, Statement, TableFactor, Visit, Visitor,
};
use sqlparser::dialect::{PostgreSqlDialect, SQLiteDialect};
use sqlparser::keywords::Keyword;
use sqlparser::parser::Parser;
use sqlparser::tokenizer::{Location, Token, TokenWithSpan};

use super::{Dialect, QueryFailure};

/// The text to run: `sql` with its fences.
pub(super) fn fenced(
    sql: &str,
    statement: &Statement,
    tokens: &[TokenWithSpan],
    dialect: Dialect,
) -> Result<String, QueryFailure> {
    let mut finder = Finder {
        dialect,
        cte_closes: Vec::new(),
        cte_offsets: Vec::new(),
        derived_starts: Vec::new(),
    };
    if let ControlFlow::Break(refusal) = statement.visit(&mut finder) {
        return Err(refusal);
    }
    let cannot = || {
        QueryFailure::refused(
            "this query's WITH or FROM subqueries could not be prepared to run safely; \
             write them in a plainer form"
                .to_string(),
        )
    };
    let mut inserts: Vec<(Location, &str)> = Vec::new();
    for close in finder.cte_closes {
        let close_at = tokens
            .iter()
            .position(|t| t.token == Token::RParen && t.span.start == close)
            .ok_or_else(cannot)?;
        let open_at = matching_open(tokens, close_at).ok_or_else(cannot)?;
        let before = previous_token(tokens, open_at).ok_or_else(cannot)?;
        match &tokens[before].token {
            Token::Word(word) if word.keyword == Keyword::AS => {}
            _ => return Err(cannot()),
        }
        inserts.push((tokens[open_at].span.start, "MATERIALIZED "));
    }
    for (close, fence) in finder.cte_offsets {
        if !tokens
            .iter()
            .any(|t| t.token == Token::RParen && t.span.start == close)
        {
            return Err(cannot());
        }
        inserts.push((close, fence_text(dialect, fence)));
    }
    for (start, fence) in finder.derived_starts {
        let first = tokens
            .iter()
            .position(|t| t.span.start == start && !matches!(t.token, Token::Whitespace(_)))
            .ok_or_else(cannot)?;
        let open = previous_token(tokens, first).ok_or_else(cannot)?;
        if tokens[open].token != Token::LParen {
            return Err(cannot());
        }
        let close = matching_close(tokens, open).ok_or_else(cannot)?;
        inserts.push((tokens[close].span.start, fence_text(dialect, fence)));
    }
    inserts.sort_by_key(|(at, _)| (at.line, at.column));
    let mut out = String::with_capacity(sql.len() + inserts.len() * 20);
    let mut cursor = super::allow_list::Cursor::new(sql);
    let mut copied = 0;
    for (at, text) in inserts {
        let byte = cursor.advance_to(at);
        out.push_str(&sql[copied..byte]);
        out.push_str(text);
        copied = byte;
    }
    out.push_str(&sql[copied..]);
    // Fail closed: the text to run must parse, and every level must now be
    // fenced; a misplaced fence is a refusal, never an unfenced run.
    let reparsed = match dialect {
        Dialect::Sqlite => Parser::parse_sql(&SQLiteDialect {}, &out),
        Dialect::Postgres => Parser::parse_sql(&PostgreSqlDialect {}, &out),
    }
    .map_err(|_| cannot())?;
    let [statement] = reparsed.as_slice() else {
        return Err(cannot());
    };
    let mut verifier = Finder {
        dialect,
        cte_closes: Vec::new(),
        cte_offsets: Vec::new(),
        derived_starts: Vec::new(),
    };
    if statement.visit(&mut verifier).is_break()
        || !verifier.cte_closes.is_empty()
        || !verifier.cte_offsets.is_empty()
        || !verifier.derived_starts.is_empty()
    {
        return Err(cannot());
    }
    Ok(out)
}

fn matching_close(tokens: &[TokenWithSpan], open: usize) -> Option<usize> {
    let mut depth = 0usize;
    for (i, token) in tokens.iter().enumerate().skip(open) {
        match token.token {
            Token::LParen => depth += 1,
            Token::RParen => {
                depth = depth.checked_sub(1)?;
                if depth == 0 {
                    return Some(i);
                }
            }
            _ => {}
        }
    }
    None
}

fn fence_text(dialect: Dialect, fence: Fence) -> &'static str {
    match (dialect, fence) {
        (Dialect::Sqlite, Fence::LimitAndOffset) => " LIMIT -1 OFFSET 0",
        _ => " OFFSET 0",
    }
}

fn matching_open(tokens: &[TokenWithSpan], close: usize) -> Option<usize> {
    let mut depth = 0usize;
    for i in (0..=close).rev() {
        match tokens[i].token {
            Token::RParen => depth += 1,
            Token::LParen => {
                depth = depth.checked_sub(1)?;
                if depth == 0 {
                    return Some(i);
                }
            }
            _ => {}
        }
    }
    None
}

fn previous_token(tokens: &[TokenWithSpan], at: usize) -> Option<usize> {
    (0..at)
        .rev()
        .find(|&i| !matches!(tokens[i].token, Token::Whitespace(_)))
}

/// Where fences go: each unfenced `WITH` query's closing parenthesis, and
/// the end of each derived table's query that has no LIMIT/OFFSET.
struct Finder {
    dialect: Dialect,
    cte_closes: Vec<Location>,
    /// SQLite: WITH queries' closing parentheses, where an OFFSET goes.
    cte_offsets: Vec<(Location, Fence)>,
    /// Where each unfenced derived table's query starts (its closing
    /// parenthesis is found from the tokens: sqlparser's spans end before
    /// an inner subquery's parenthesis).
    derived_starts: Vec<(Location, Fence)>,
}

/// What a query needs so that SQLite does not flatten it: an OFFSET.
fn sqlite_fence(query: &Query) -> Option<Fence> {
    match &query.limit_clause {
        None => Some(Fence::LimitAndOffset),
        Some(LimitClause::LimitOffset { limit, offset, .. }) => match (limit, offset) {
            (_, Some(_)) => None,
            (Some(_), None) => Some(Fence::Offset),
            (None, None) => Some(Fence::LimitAndOffset),
        },
        Some(LimitClause::OffsetCommaLimit { .. }) => None,
    }
}

#[derive(Clone, Copy)]
enum Fence {
    /// No LIMIT yet: `OFFSET 0` (PostgreSQL), `LIMIT -1 OFFSET 0` (SQLite).
    LimitAndOffset,
    /// A LIMIT without OFFSET (SQLite): ` OFFSET 0`.
    Offset,
}

impl Visitor for Finder {
    type Break = QueryFailure;

    fn pre_visit_query(&mut self, query: &Query) -> ControlFlow<QueryFailure> {
        if let Some(with) = &query.with {
            for cte in &with.cte_tables {
                match cte.materialized {
                    Some(CteAsMaterialized::Materialized) => {}
                    Some(CteAsMaterialized::NotMaterialized) => {
                        return ControlFlow::Break(QueryFailure::refused(
                            "NOT MATERIALIZED is not allowed: every WITH query runs materialized"
                                .to_string(),
                        ));
                    }
                    // SQLite's authorizer reports a materialized WITH query
                    // under its own name, as if it were a stored table, so
                    // there the fence is the same OFFSET as for subqueries.
                    None if self.dialect == Dialect::Sqlite => {
                        if let Some(fence) = sqlite_fence(&cte.query) {
                            self.cte_offsets
                                .push((cte.closing_paren_token.0.span.start, fence));
                        }
                    }
                    None => self.cte_closes.push(cte.closing_paren_token.0.span.start),
                }
            }
        }
        ControlFlow::Continue(())
    }

    fn pre_visit_table_factor(&mut self, factor: &TableFactor) -> ControlFlow<QueryFailure> {
        if let TableFactor::Derived { subquery, .. } = factor {
            // PostgreSQL keeps any subquery with LIMIT or OFFSET apart;
            // SQLite only one with an OFFSET.
            let fence = match self.dialect {
                Dialect::Sqlite => sqlite_fence(subquery),
                Dialect::Postgres
                    if subquery.limit_clause.is_none() && subquery.fetch.is_none() =>
                {
                    Some(Fence::LimitAndOffset)
                }
                Dialect::Postgres => None,
            };
            if let Some(fence) = fence {
                self.derived_starts.push((subquery.span().start, fence));
            }
        }
        ControlFlow::Continue(())
    }
}

#[cfg(test)]
mod tests {
    use crate::tenant_sql::{Dialect, check};

    fn run(sql: &str, dialect: Dialect) -> String {
        check(sql, dialect)
            .unwrap_or_else(|e| panic!("{sql}: {e}"))
            .text()
            .to_string()
    }

    #[test]
    fn with_queries_and_derived_tables_are_fenced_where_they_stand() {
        let cases = [
            (
                "WITH a AS (SELECT 1 AS x), b AS /* ( */ (SELECT x + x AS x FROM a) SELECT x FROM b",
                "WITH a AS MATERIALIZED (SELECT 1 AS x), b AS /* ( */ MATERIALIZED (SELECT x + x AS x FROM a) SELECT x FROM b",
                "WITH a AS (SELECT 1 AS x LIMIT -1 OFFSET 0), b AS /* ( */ (SELECT x + x AS x FROM a LIMIT -1 OFFSET 0) SELECT x FROM b",
            ),
            (
                "SELECT * FROM (SELECT name FROM events ORDER BY name) AS s, (SELECT 1 UNION SELECT 2) t",
                "SELECT * FROM (SELECT name FROM events ORDER BY name OFFSET 0) AS s, (SELECT 1 UNION SELECT 2 OFFSET 0) t",
                "SELECT * FROM (SELECT name FROM events ORDER BY name LIMIT -1 OFFSET 0) AS s, (SELECT 1 UNION SELECT 2 LIMIT -1 OFFSET 0) t",
            ),
            (
                "SELECT * FROM (SELECT x FROM (SELECT 1 AS x) i LIMIT 5) o",
                "SELECT * FROM (SELECT x FROM (SELECT 1 AS x OFFSET 0) i LIMIT 5) o",
                "SELECT * FROM (SELECT x FROM (SELECT 1 AS x LIMIT -1 OFFSET 0) i LIMIT 5 OFFSET 0) o",
            ),
            (
                "WITH RECURSIVE n(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM n WHERE x < 3) SELECT * FROM n",
                "WITH RECURSIVE n(x) AS MATERIALIZED (SELECT 1 UNION ALL SELECT x + 1 FROM n WHERE x < 3) SELECT * FROM n",
                "WITH RECURSIVE n(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM n WHERE x < 3 LIMIT -1 OFFSET 0) SELECT * FROM n",
            ),
        ];
        for (sql, postgres, sqlite) in cases {
            assert_eq!(run(sql, Dialect::Postgres), postgres);
            assert_eq!(run(sql, Dialect::Sqlite), sqlite);
        }
        assert!(
            check(
                "WITH a AS NOT MATERIALIZED (SELECT 1) SELECT * FROM a",
                Dialect::Postgres
            )
            .is_err()
        );
        // A derived table whose query ends in an inner subquery: the fence
        // goes after the derived table's own parenthesis.
        let inner = "SELECT * FROM (SELECT name FROM events WHERE (SELECT true)) a, \
                     LATERAL (SELECT 1 AS y WHERE name IN (SELECT name FROM events)) b, \
                     (SELECT 2 AS z WHERE EXISTS (SELECT 1)) c";
        assert_eq!(
            run(inner, Dialect::Postgres),
            "SELECT * FROM (SELECT name FROM events WHERE (SELECT true) OFFSET 0) a, \
                     LATERAL (SELECT 1 AS y WHERE name IN (SELECT name FROM events) OFFSET 0) b, \
                     (SELECT 2 AS z WHERE EXISTS (SELECT 1) OFFSET 0) c"
        );
        assert_eq!(
            run(
                "SELECT * FROM (SELECT 1 AS x WHERE (SELECT 1)) t",
                Dialect::Sqlite
            ),
            "SELECT * FROM (SELECT 1 AS x WHERE (SELECT 1) LIMIT -1 OFFSET 0) t"
        );
    }
}
