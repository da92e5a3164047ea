//! The walk over a query's syntax tree that decides what it may say:
//! scopes of `WITH` names, relations, types, functions and operators;
//! `expressions` holds the rules for single expressions.

use std::ops::ControlFlow;

use sqlparser::ast::{
    DataType, Expr, Ident, ObjectName, ObjectNamePart, Query, Select, SetExpr, SetOperator,
    SetQuantifier, Spanned, Statement, TableFactor, Value, Visit, Visitor,
};
use sqlparser::tokenizer::Span;

use super::lists::*;
use super::{refuse, too_complex_once_prepared};
use crate::tenant_sql::expansion::Expansion;
use crate::tenant_sql::{Dialect, QueryFailure};

mod expressions;

/// The `WITH` names of one query level and which of them are in scope.
struct Frame {
    names: Vec<String>,
    recursive: bool,
    /// How many of the names' own queries the walk has entered.
    entered: usize,
    /// The `WITH` query being walked (its later siblings are out of scope),
    /// or `None` once the walk is in the query's body.
    in_cte: Option<usize>,
}

impl Frame {
    /// The names visible from the walk's current position under this frame.
    fn visible(&self, is_top: bool) -> &[String] {
        let end = match (is_top, self.in_cte) {
            (true, _) | (false, None) => self.names.len(),
            // Without RECURSIVE a WITH query sees only the earlier ones.
            (false, Some(i)) => (if self.recursive { i + 1 } else { i }).min(self.names.len()),
        };
        &self.names[..end]
    }
}

pub(super) struct Walker {
    dialect: Dialect,
    frames: Vec<Frame>,
    /// Pattern matches seen so far (PostgreSQL allows [`MAX_PATTERN_MATCHES`]).
    pattern_matches: usize,
    /// Computed items of lists and rows seen so far (PostgreSQL allows
    /// [`MAX_COMPUTED_ITEMS`]).
    computed_items: usize,
    expansion: Expansion,
    /// Every name a relation goes by anywhere in the query (see
    /// [`RelationNames`]).
    relations: std::collections::HashSet<String>,
}

/// Collects every name a relation goes by in a query: tables, `WITH`
/// names, aliases. On PostgreSQL such a name used as a value is the whole
/// row, whose text (`t::text`, `'' || t`) has no size limit: 1 000 columns
/// of 256 KiB made 1 GB in one backend.
struct RelationNames {
    dialect: Dialect,
    names: std::collections::HashSet<String>,
}

impl Visitor for RelationNames {
    type Break = ();

    fn pre_visit_query(&mut self, query: &Query) -> ControlFlow<()> {
        for cte in query.with.iter().flat_map(|with| &with.cte_tables) {
            self.names.insert(folded(&cte.alias.name, self.dialect));
        }
        ControlFlow::Continue(())
    }

    fn pre_visit_table_factor(&mut self, factor: &TableFactor) -> ControlFlow<()> {
        let (name, alias) = match factor {
            TableFactor::Table { name, alias, .. } => (name.0.last(), alias.as_ref()),
            TableFactor::Derived { alias, .. } | TableFactor::NestedJoin { alias, .. } => {
                (None, alias.as_ref())
            }
            _ => (None, None),
        };
        if let Some(ObjectNamePart::Identifier(ident)) = name {
            self.names.insert(folded(ident, self.dialect));
        }
        if let Some(alias) = alias {
            self.names.insert(folded(&alias.name, self.dialect));
        }
        ControlFlow::Continue(())
    }
}

impl Walker {
    /// A walker for `statement`, knowing every name its relations go by.
    pub(super) fn for_statement(statement: &Statement, dialect: Dialect) -> Walker {
        let mut relations = RelationNames {
            dialect,
            names: std::collections::HashSet::new(),
        };
        let _ = statement.visit(&mut relations);
        Walker {
            dialect,
            frames: Vec::new(),
            pattern_matches: 0,
            computed_items: 0,
            expansion: Expansion::new(dialect),
            relations: relations.names,
        }
    }
}

/// A date or time type, whose text input may name a time zone.
fn is_time_type(data_type: &DataType) -> bool {
    let text = data_type.to_string().to_ascii_lowercase();
    text.starts_with("time") || text.starts_with("date")
}

/// How many column references `expr` holds, subqueries included.
fn column_references(expr: &Expr) -> usize {
    let mut count = 0;
    let _ = sqlparser::ast::visit_expressions(expr, |e| {
        if matches!(e, Expr::Identifier(_) | Expr::CompoundIdentifier(_)) {
            count += 1;
        }
        ControlFlow::<()>::Continue(())
    });
    count
}

/// The text of a string literal, if `expr` is one.
fn string_literal(expr: &Expr) -> Option<&str> {
    match expr {
        Expr::Value(value) => match &value.value {
            Value::SingleQuotedString(s)
            | Value::EscapedStringLiteral(s)
            | Value::NationalStringLiteral(s) => Some(s),
            _ => None,
        },
        Expr::Nested(inner) => string_literal(inner),
        _ => None,
    }
}

/// How an identifier compares: PostgreSQL keeps the case of quoted names;
/// SQLite ignores case everywhere.
fn folded(ident: &Ident, dialect: Dialect) -> String {
    if ident.quote_style.is_some() && dialect == Dialect::Postgres {
        ident.value.clone()
    } else {
        ident.value.to_ascii_lowercase()
    }
}

impl Walker {
    /// On PostgreSQL, a recursive `WITH` query combines its parts with
    /// `UNION ALL`: `UNION` keeps every row seen in a hash table that
    /// ignores `work_mem` (measured: 1.74 GB from one query).
    fn check_recursive_unions(&self, query: &Query) -> ControlFlow<QueryFailure> {
        for cte in query.with.iter().flat_map(|with| &with.cte_tables) {
            if let SetExpr::SetOperation {
                op: SetOperator::Union,
                set_quantifier,
                ..
            } = &*cte.query.body
                && !matches!(
                    set_quantifier,
                    SetQuantifier::All | SetQuantifier::AllByName
                )
            {
                return refuse(
                    "WITH RECURSIVE may combine its parts only with UNION ALL on this store (end \
                     the recursion with a WHERE condition instead of relying on UNION to drop \
                     repeated rows)"
                        .into(),
                    cte.query.span(),
                );
            }
        }
        ControlFlow::Continue(())
    }

    /// On PostgreSQL: a literal pattern of at most [`MAX_PATTERN_BYTES`],
    /// and at most [`MAX_PATTERN_MATCHES`] in one query.
    fn check_pattern(&mut self, pattern: &Expr, span: Span) -> ControlFlow<QueryFailure> {
        // Both engines match in time |text| × |pattern| and check for
        // cancellation only between rows (SQLite: between its loop steps).
        self.pattern_matches += 1;
        if self.pattern_matches > MAX_PATTERN_MATCHES {
            return refuse(
                format!("at most {MAX_PATTERN_MATCHES} LIKE/ILIKE matches in one query"),
                span,
            );
        }
        if self.dialect != Dialect::Postgres {
            return ControlFlow::Continue(());
        }
        match string_literal(pattern) {
            Some(text) if text.len() <= MAX_PATTERN_BYTES => ControlFlow::Continue(()),
            Some(_) => refuse(
                format!("a LIKE pattern may be at most {MAX_PATTERN_BYTES} bytes on this store"),
                span,
            ),
            None => refuse(
                "a LIKE pattern must be a string literal on this store ('%text%')".into(),
                span,
            ),
        }
    }

    fn in_scope(&self, name: &str) -> bool {
        let top = self.frames.len().saturating_sub(1);
        self.frames
            .iter()
            .enumerate()
            .any(|(i, frame)| frame.visible(i == top).iter().any(|n| n == name))
    }

    fn check_body(&self, body: &SetExpr) -> ControlFlow<QueryFailure> {
        match body {
            SetExpr::Select(_) | SetExpr::Query(_) | SetExpr::Values(_) => {
                ControlFlow::Continue(())
            }
            SetExpr::SetOperation { left, right, .. } => {
                self.check_body(left)?;
                self.check_body(right)
            }
            SetExpr::Insert(s) | SetExpr::Update(s) | SetExpr::Delete(s) | SetExpr::Merge(s) => {
                refuse("a query may not write".into(), s.span())
            }
            SetExpr::Table(_) => refuse(
                "`TABLE name` is not supported: write SELECT * FROM name".into(),
                body.span(),
            ),
        }
    }

    fn check_type(&self, data_type: &DataType, span: Span) -> ControlFlow<QueryFailure> {
        let text = data_type.to_string().to_ascii_lowercase();
        // No arrays: PostgreSQL's text-to-array casts take 27 to 42 times
        // their input's size in memory, and nothing here needs them.
        let base = text.split('(').next().unwrap_or(&text).trim();
        if self.dialect == Dialect::Postgres
            && let Some(args) = text.split('(').nth(1)
            && args.trim_end_matches(')').split(',').any(|n| {
                n.trim()
                    .parse::<u64>()
                    .map_or(true, |n| n > MAX_TYPE_LENGTH)
            })
            && matches!(base, "char" | "character" | "varchar" | "character varying")
        {
            return refuse(
                format!("a length in {text} may be at most {MAX_TYPE_LENGTH} on this store"),
                span,
            );
        }
        if ALLOWED_TYPES.contains(&base) {
            ControlFlow::Continue(())
        } else {
            refuse(
                format!(
                    "the type {text} is not allowed; use one of: {}",
                    ALLOWED_TYPES.join(", ")
                ),
                span,
            )
        }
    }

    /// Whether `alias.name` could call a function outside the allow-list
    /// on a whole row (`e.pg_typeof` is `pg_typeof(e)` on PostgreSQL).
    fn is_record_function(&self, name: &Ident) -> bool {
        RECORD_FUNCTIONS.contains(&folded(name, self.dialect).as_str())
    }

    fn check_function_name(&self, name: &ObjectName, span: Span) -> ControlFlow<QueryFailure> {
        let printed = name.to_string();
        let allowed = match name.0.as_slice() {
            [ObjectNamePart::Identifier(ident)] => {
                self.dialect.allows_function(&folded(ident, self.dialect))
            }
            _ => false,
        };
        if allowed {
            ControlFlow::Continue(())
        } else {
            refuse(
                format!(
                    "the function {printed} is not allowed (GET /v1/metrics/schema lists those that are)"
                ),
                span,
            )
        }
    }
}

impl Visitor for Walker {
    type Break = QueryFailure;

    fn pre_visit_query(&mut self, query: &Query) -> ControlFlow<QueryFailure> {
        if !query.locks.is_empty() {
            return refuse(
                "a query may not lock rows (FOR UPDATE/SHARE)".into(),
                query.span(),
            );
        }
        if query.for_clause.is_some()
            || query.settings.is_some()
            || query.format_clause.is_some()
            || !query.pipe_operators.is_empty()
        {
            return refuse("this query clause is not supported".into(), query.span());
        }
        self.check_body(&query.body)?;
        // The queries a frame's WITH defines are its first children, in order.
        if let Some(parent) = self.frames.last_mut() {
            if parent.entered < parent.names.len() {
                parent.in_cte = Some(parent.entered);
                parent.entered += 1;
            } else {
                parent.in_cte = None;
            }
        }
        // The WITH query this level is, if it is one.
        let defines = self
            .frames
            .last()
            .and_then(|parent| parent.in_cte.and_then(|i| parent.names.get(i)).cloned());
        let (names, recursive) = match &query.with {
            Some(with) => (
                with.cte_tables
                    .iter()
                    .map(|cte| folded(&cte.alias.name, self.dialect))
                    .collect(),
                with.recursive,
            ),
            None => (Vec::new(), false),
        };
        if recursive && self.dialect == Dialect::Postgres {
            self.check_recursive_unions(query)?;
        }
        self.frames.push(Frame {
            names,
            recursive,
            entered: 0,
            in_cte: None,
        });
        self.expansion.enter_query(query, defines);
        ControlFlow::Continue(())
    }

    fn post_visit_query(&mut self, _query: &Query) -> ControlFlow<QueryFailure> {
        self.frames.pop();
        self.expansion.leave_query();
        ControlFlow::Continue(())
    }

    fn pre_visit_select(&mut self, select: &Select) -> ControlFlow<QueryFailure> {
        if select.into.is_some() {
            return refuse(
                "SELECT INTO writes a table; a query may not write".into(),
                select.span(),
            );
        }
        if !select.lateral_views.is_empty()
            || !select.connect_by.is_empty()
            || select.prewhere.is_some()
            || !select.cluster_by.is_empty()
            || !select.distribute_by.is_empty()
            || !select.sort_by.is_empty()
            || select.value_table_mode.is_some()
        {
            return refuse("this SELECT clause is not supported".into(), select.span());
        }
        // SQLite copies a named window's PARTITION BY and ORDER BY into every
        // function that names it, before any time limit applies (8 nested
        // levels of 5 functions: 1.78 GB in prepare). Written out in each
        // OVER (…), the copies are in the text and counted.
        if self.dialect == Dialect::Sqlite && !select.named_window.is_empty() {
            return refuse(
                "named windows (WINDOW w AS (…)) are not allowed on this store: write the \
                 window in each OVER (…)"
                    .into(),
                select.span(),
            );
        }
        self.expansion.enter_select(select);
        ControlFlow::Continue(())
    }

    fn pre_visit_relation(&mut self, relation: &ObjectName) -> ControlFlow<QueryFailure> {
        let printed = relation.to_string();
        let name = match relation.0.as_slice() {
            [ObjectNamePart::Identifier(ident)] => folded(ident, self.dialect),
            _ => {
                return refuse(
                    format!(
                        "the relation {printed} is not available: write events or contacts, without a schema"
                    ),
                    relation.span(),
                );
            }
        };
        if name == "events" || name == "contacts" || self.in_scope(&name) {
            return match self.expansion.read_with_query(&name) {
                Ok(()) => ControlFlow::Continue(()),
                Err(nodes) => refuse(too_complex_once_prepared(nodes), relation.span()),
            };
        }
        refuse(
            format!(
                "the relation {printed} is not available: a query reads events, contacts and the names its own WITH defines"
            ),
            relation.span(),
        )
    }

    fn pre_visit_table_factor(&mut self, factor: &TableFactor) -> ControlFlow<QueryFailure> {
        match factor {
            TableFactor::Table {
                args,
                with_hints,
                version,
                partitions,
                json_path,
                sample,
                index_directives,
                ..
            } => {
                if args.is_some() {
                    return refuse(
                        "table-valued functions are not allowed".into(),
                        factor.span(),
                    );
                }
                if !with_hints.is_empty()
                    || version.is_some()
                    || !partitions.is_empty()
                    || json_path.is_some()
                    || sample.is_some()
                    || !index_directives.is_empty()
                {
                    return refuse("this table clause is not supported".into(), factor.span());
                }
                ControlFlow::Continue(())
            }
            TableFactor::Derived { .. } | TableFactor::NestedJoin { .. } => {
                ControlFlow::Continue(())
            }
            _ => refuse(
                "table functions (UNNEST, JSON_TABLE, PIVOT…) are not allowed".into(),
                factor.span(),
            ),
        }
    }

    fn pre_visit_expr(&mut self, expr: &Expr) -> ControlFlow<QueryFailure> {
        self.check_expr(expr)?;
        self.count_computed_items(expr)?;
        self.expansion.enter_expr();
        ControlFlow::Continue(())
    }

    fn post_visit_expr(&mut self, expr: &Expr) -> ControlFlow<QueryFailure> {
        match self.expansion.leave_expr(expr) {
            Ok(()) => ControlFlow::Continue(()),
            Err(nodes) => refuse(too_complex_once_prepared(nodes), expr.span()),
        }
    }
}
