//! How big a query's expressions become inside the engine, before it runs.
//!
//! Both engines copy some expressions while they prepare a query, and a
//! copy of a copy doubles: PostgreSQL rewrites `a BETWEEN b AND c` as
//! `a >= b AND a <= c` and `a IN (x, y)` with non-constant items as
//! `a = x OR a = y`, each with its own copy of `a`; SQLite replaces a name
//! that refers to a result column's alias (`… AS t … WHERE t > 1`) by a copy
//! of that column's expression. Forty nested levels are 2^40 copies:
//! measured, 4.7 GB and 30 s in SQLite's uninterruptible prepare, and the
//! same in PostgreSQL's parse analysis, which the statement timeout does not
//! reach. The walk below counts, for every expression, its size as written
//! and its size once copied, and refuses a query whose copies add more than
//! [`MAX_COPIED_NODES`] nodes. It over-counts on purpose (an alias name may
//! really be a column), never under-counts.

use std::collections::{HashMap, HashSet};

use sqlparser::ast::{
    BinaryOperator, Expr, GroupByExpr, InTarget, OrderBy, OrderByKind, Query, Select, SelectItem,
    UnaryOperator, Value,
};

use super::Dialect;

/// Expression nodes the engine's copies may add to a query at most; an
/// ordinary query adds none or a few dozen.
pub const MAX_COPIED_NODES: u64 = 10_000;

/// An expression's size in nodes: as written, and once the engine has made
/// its copies.
#[derive(Clone, Copy, Default)]
struct Size {
    written: u64,
    copied: u64,
}

impl Size {
    fn extra(self) -> u64 {
        self.copied.saturating_sub(self.written)
    }
}

/// The result columns of one query level, as later names and ordinals
/// refer to them.
#[derive(Default)]
struct Scope {
    /// Result columns of this level's latest `SELECT`: the expression's
    /// address, its alias if any, and its size once copied when known.
    columns: Vec<(Option<*const Expr>, Option<String>, u64)>,
    /// Where each result column's expression is in `columns`.
    column_at: HashMap<*const Expr, usize>,
    /// Aliases whose size is known, with that size once copied.
    known: HashMap<String, u64>,
    /// `GROUP BY` and `ORDER BY` terms, which SQLite reads as result
    /// column numbers when they are integers (`GROUP BY 1`).
    ordinal_terms: HashSet<*const Expr>,
    /// The `WITH` query this level defines, if it is one (its name).
    defines: Option<String>,
    /// The sizes once copied of the `WITH` queries this level defines, and
    /// how many names have read each so far.
    with_sizes: HashMap<String, (u64, u32)>,
    /// This level's size once copied so far: its top-level expressions,
    /// the levels in its `FROM`, and the `WITH` queries it reads.
    size: u64,
}

/// What a pattern match weighs in nodes: each costs up to |text| ×
/// |pattern| (~20 ms on 90 KB), far more than an ordinary node, so copies of
/// one are counted as copies of that many nodes.
const PATTERN_MATCH_NODES: u64 = 500;

pub struct Expansion {
    dialect: Dialect,
    /// One entry per expression being walked: the sizes of its children
    /// walked so far, in the order they were walked.
    open: Vec<Vec<Size>>,
    scopes: Vec<Scope>,
    /// Nodes added by copies in the expressions finished at the top level.
    total_extra: u64,
}

impl Expansion {
    pub fn new(dialect: Dialect) -> Self {
        Self {
            dialect,
            open: Vec::new(),
            scopes: Vec::new(),
            total_extra: 0,
        }
    }

    /// Enters a query level; `defines` names the `WITH` query it is, if
    /// it is one.
    pub fn enter_query(&mut self, query: &Query, defines: Option<String>) {
        let mut scope = Scope {
            defines,
            size: 1,
            ..Scope::default()
        };
        if let Some(OrderBy {
            kind: OrderByKind::Expressions(terms),
            ..
        }) = &query.order_by
        {
            scope.ordinal_terms = terms.iter().map(|t| &t.expr as *const Expr).collect();
        }
        self.scopes.push(scope);
    }

    /// Leaves a query level: a `WITH` query's size is kept for the names
    /// that read it; a level in a `FROM` or a set operation adds its size to
    /// the level around it (one inside an expression is counted there).
    pub fn leave_query(&mut self) {
        let Some(done) = self.scopes.pop() else {
            return;
        };
        let inside_expression = !self.open.is_empty();
        if let Some(parent) = self.scopes.last_mut() {
            match done.defines {
                Some(name) => {
                    let known = parent.with_sizes.entry(name).or_insert((0, 0));
                    known.0 = known.0.max(done.size);
                }
                None if !inside_expression => {
                    parent.size = parent.size.saturating_add(done.size);
                }
                None => {}
            }
        }
    }

    /// A `FROM` names `name`, a `WITH` query in scope: SQLite copies that
    /// query, whole, for every name that reads it (before any
    /// materialisation), so every read after the first adds its size.
    /// `Err` as `leave_expr`.
    pub fn read_with_query(&mut self, name: &str) -> Result<(), u64> {
        if self.dialect != Dialect::Sqlite {
            return Ok(());
        }
        let Some((copied, reads)) = self
            .scopes
            .iter_mut()
            .rev()
            .find_map(|scope| scope.with_sizes.get_mut(name))
            .map(|(size, reads)| {
                *reads += 1;
                (*size, *reads)
            })
        else {
            return Ok(());
        };
        if let Some(scope) = self.scopes.last_mut() {
            scope.size = scope.size.saturating_add(copied);
        }
        match self.open.last_mut() {
            // Read inside an expression (a scalar subquery, EXISTS, IN …):
            // the expression carries the copy, so copies of the expression
            // (an alias, a column number, another WITH query) copy it too;
            // its extra counts when the expression is done.
            Some(frame) => frame.push(Size {
                written: if reads > 1 { 0 } else { copied },
                copied,
            }),
            None if reads > 1 => {
                self.total_extra = self.total_extra.saturating_add(copied);
            }
            None => {}
        }
        if self.total_extra > MAX_COPIED_NODES {
            return Err(self.total_extra);
        }
        Ok(())
    }

    /// Remembers `select`'s result columns, so that a later alias or
    /// column number that refers to one counts its expression's size (SQLite
    /// compares names without regard to ASCII case).
    pub fn enter_select(&mut self, select: &Select) {
        if self.dialect != Dialect::Sqlite {
            return;
        }
        if let Some(scope) = self.scopes.last_mut() {
            // Each SELECT of a set operation names its own columns.
            scope.known.clear();
            scope.columns = select
                .projection
                .iter()
                .map(|item| match item {
                    SelectItem::ExprWithAlias { expr, alias } => (
                        Some(expr as *const Expr),
                        Some(alias.value.to_ascii_lowercase()),
                        0,
                    ),
                    SelectItem::UnnamedExpr(expr) => (Some(expr as *const Expr), None, 0),
                    _ => (None, None, 0),
                })
                .collect();
            scope.column_at = scope
                .columns
                .iter()
                .enumerate()
                .filter_map(|(i, (ptr, _, _))| ptr.map(|p| (p, i)))
                .collect();
            if let GroupByExpr::Expressions(terms, _) = &select.group_by {
                scope
                    .ordinal_terms
                    .extend(terms.iter().map(|t| t as *const Expr));
            }
        }
    }

    pub fn enter_expr(&mut self) {
        self.open.push(Vec::new());
    }

    /// Finishes `expr`, whose children have all been walked. `Err` holds
    /// the number of nodes the copies add when that is too many.
    pub fn leave_expr(&mut self, expr: &Expr) -> Result<(), u64> {
        let children = self.open.pop().unwrap_or_default();
        let size = self.size_of(expr, &children);
        if size.extra() > MAX_COPIED_NODES {
            return Err(size.extra());
        }
        if let Some(scope) = self.scopes.last_mut()
            && let Some(&at) = scope.column_at.get(&(expr as *const Expr))
            && let Some(column) = scope.columns.get_mut(at)
        {
            column.2 = size.copied;
            if let Some(name) = column.1.clone() {
                // Two columns of one name: whichever SQLite resolves to, the
                // larger is counted.
                let known = scope.known.entry(name).or_insert(0);
                *known = (*known).max(size.copied);
            }
        }
        match self.open.last_mut() {
            Some(parent) => parent.push(size),
            None => {
                if let Some(scope) = self.scopes.last_mut() {
                    scope.size = scope.size.saturating_add(size.copied);
                }
                self.total_extra = self.total_extra.saturating_add(size.extra());
                if self.total_extra > MAX_COPIED_NODES {
                    return Err(self.total_extra);
                }
            }
        }
        Ok(())
    }

    fn size_of(&self, expr: &Expr, children: &[Size]) -> Size {
        let sum = |f: fn(&Size) -> u64| {
            children
                .iter()
                .map(f)
                .fold(1u64, |total, n| total.saturating_add(n))
        };
        let mut size = Size {
            written: sum(|s| s.written),
            copied: sum(|s| s.copied),
        };
        let left = children.first().map_or(0, |s| s.copied);
        let more_copies_of_left = match (self.dialect, expr) {
            (Dialect::Postgres, Expr::Between { .. }) => 1,
            (
                Dialect::Postgres,
                Expr::In {
                    expr: left_expr,
                    target: InTarget::List(items),
                    ..
                },
            ) => {
                let copies = if matches!(**left_expr, Expr::Tuple(_)) {
                    // A row compared with a list: one comparison per row.
                    items.len()
                } else {
                    // Constants share one `= ANY (array)`; every other item
                    // gets a comparison of its own.
                    let constants = items.iter().filter(|i| is_constant(i)).count();
                    items.len() - constants + usize::from(constants > 0)
                };
                copies.saturating_sub(1) as u64
            }
            (Dialect::Sqlite, Expr::Identifier(ident)) => {
                size.copied = size
                    .copied
                    .saturating_add(self.alias_size(&ident.value.to_ascii_lowercase()));
                0
            }
            _ => 0,
        };
        if self.dialect == Dialect::Sqlite {
            size.copied = size.copied.saturating_add(self.ordinal_size(expr));
        }
        if is_pattern_match(expr) {
            size.written = size.written.saturating_add(PATTERN_MATCH_NODES);
            size.copied = size.copied.saturating_add(PATTERN_MATCH_NODES);
        }
        size.copied = size
            .copied
            .saturating_add(left.saturating_mul(more_copies_of_left));
        size
    }

    /// The size once copied of the innermost visible alias named `name`
    /// (0 when none is).
    fn alias_size(&self, name: &str) -> u64 {
        self.scopes
            .iter()
            .rev()
            .find_map(|scope| scope.known.get(name).copied())
            .unwrap_or(0)
    }

    /// The size once copied of the result column that `expr`, a term of
    /// this level's `GROUP BY` or `ORDER BY` that is an integer, names (0
    /// otherwise): SQLite copies that column's expression in its place.
    fn ordinal_size(&self, expr: &Expr) -> u64 {
        let Some(scope) = self.scopes.last() else {
            return 0;
        };
        if !scope.ordinal_terms.contains(&(expr as *const Expr)) {
            return 0;
        }
        ordinal(expr)
            .and_then(|n| n.checked_sub(1))
            .and_then(|i| scope.columns.get(i))
            .map_or(0, |(_, _, size)| *size)
    }
}

/// The integer a term is, as SQLite reads a column number: through
/// parentheses, a unary plus and `COLLATE` (`(1)`, `+1`, `1 COLLATE nocase`).
fn ordinal(expr: &Expr) -> Option<usize> {
    match expr {
        Expr::Value(value) => match &value.value {
            Value::Number(n, _) => n.parse().ok(),
            _ => None,
        },
        Expr::Nested(inner)
        | Expr::UnaryOp {
            op: UnaryOperator::Plus,
            expr: inner,
        }
        | Expr::Collate { expr: inner, .. } => ordinal(inner),
        _ => None,
    }
}

/// A `LIKE`/`ILIKE` (or PostgreSQL's `~~` family).
fn is_pattern_match(expr: &Expr) -> bool {
    matches!(
        expr,
        Expr::Like { .. }
            | Expr::ILike { .. }
            | Expr::BinaryOp {
                op: BinaryOperator::PGLikeMatch
                    | BinaryOperator::PGILikeMatch
                    | BinaryOperator::PGNotLikeMatch
                    | BinaryOperator::PGNotILikeMatch,
                ..
            }
    )
}

/// A literal written in the text (a number, a string, `NULL`, `-1`,
/// `DATE '…'`, `'…'::date`, a row of those): PostgreSQL folds it into a
/// constant, which an `IN` list shares with the others in one array.
pub fn is_constant(expr: &Expr) -> bool {
    match expr {
        Expr::Value(value) => !matches!(value.value, Value::Placeholder(_)),
        Expr::UnaryOp {
            op: UnaryOperator::Minus | UnaryOperator::Plus,
            expr,
        }
        | Expr::Nested(expr)
        | Expr::Cast { expr, .. } => is_constant(expr),
        Expr::TypedString(_) => true,
        Expr::Tuple(items) => items.iter().all(is_constant),
        _ => false,
    }
}
