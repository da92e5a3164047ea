//! What one expression may say: functions, casts, operators, patterns,
//! list sizes and the copies a prepared statement would make.

use std::ops::ControlFlow;

use sqlparser::ast::{
    AccessExpr, BinaryOperator, DataType, Expr, FunctionArg, FunctionArgExpr, FunctionArguments,
    InTarget, ObjectNamePart, Spanned, UnaryOperator, Value,
};

use super::super::lists::*;
use super::super::refuse;
use super::*;
use crate::tenant_sql::expansion::is_constant;
use crate::tenant_sql::{Dialect, QueryFailure};

impl Walker {
    /// What one expression may say, whatever its children say.
    pub(super) fn check_expr(&mut self, expr: &Expr) -> ControlFlow<QueryFailure> {
        // With a text FROM, PostgreSQL's substring runs a regular
        // expression, compiled into a per-backend cache that ignores
        // work_mem (round 10: 272 MiB from one query of computed patterns).
        // Positions must be integers.
        if let Expr::Substring {
            substring_from,
            substring_for,
            ..
        } = expr
            && self.dialect == Dialect::Postgres
        {
            for part in [substring_from, substring_for].into_iter().flatten() {
                if !is_integer(part) {
                    return refuse(
                        "substring's FROM and FOR take integers on this store (a number, \
                         length(…), arithmetic of those, or CAST(… AS integer)): with text it \
                         would run a regular expression"
                            .into(),
                        part.span(),
                    );
                }
            }
        }
        match expr {
            Expr::Function(function) => {
                self.check_function_name(&function.name, expr.span())?;
                // PostgreSQL trims with a character set in time |text| × |set|
                // and checks for cancellation nowhere inside.
                let args = match &function.args {
                    FunctionArguments::List(list) => list.args.len(),
                    _ => 0,
                };
                let name = match function.name.0.as_slice() {
                    [ObjectNamePart::Identifier(ident)] => folded(ident, self.dialect),
                    _ => function.name.to_string(),
                };
                if self.dialect == Dialect::Postgres
                    && args > 1
                    && matches!(name.as_str(), "ltrim" | "rtrim" | "btrim" | "trim")
                {
                    return refuse(
                        format!("{name} with a set of characters is not allowed on this store"),
                        expr.span(),
                    );
                }
                if self.dialect == Dialect::Postgres && args > MAX_ARGUMENTS {
                    return refuse(
                        format!("a call takes at most {MAX_ARGUMENTS} arguments on this store"),
                        expr.span(),
                    );
                }
                if self.dialect == Dialect::Postgres && name == "date_trunc" && args == 3 {
                    let zone = match &function.args {
                        FunctionArguments::List(list) => match list.args.get(2) {
                            Some(FunctionArg::Unnamed(FunctionArgExpr::Expr(e))) => {
                                string_literal(e)
                            }
                            _ => None,
                        },
                        _ => None,
                    };
                    if zone.is_none() {
                        return refuse(
                            "date_trunc's time zone must be a string literal on this store".into(),
                            expr.span(),
                        );
                    }
                }
                if self.dialect == Dialect::Postgres
                    && (name == "to_char" || (name == "to_timestamp" && args == 2))
                {
                    let format = match &function.args {
                        FunctionArguments::List(list) => match list.args.get(1) {
                            Some(FunctionArg::Unnamed(FunctionArgExpr::Expr(e))) => {
                                string_literal(e)
                            }
                            _ => None,
                        },
                        _ => None,
                    };
                    if format.is_none_or(|f| f.len() > MAX_FORMAT_BYTES) {
                        return refuse(
                            format!(
                                "{name}'s format must be a string literal of at most {MAX_FORMAT_BYTES} bytes on this store"
                            ),
                            expr.span(),
                        );
                    }
                }
                ControlFlow::Continue(())
            }
            Expr::Like {
                pattern,
                escape_char,
                ..
            }
            | Expr::ILike {
                pattern,
                escape_char,
                ..
            } => {
                self.check_pattern(pattern, expr.span())?;
                match escape_char {
                    Some(escape)
                        if self.dialect == Dialect::Postgres
                            && string_literal(escape).is_none_or(|e| e.chars().count() > 1) =>
                    {
                        refuse(
                            "ESCAPE must be a one-character string literal".into(),
                            expr.span(),
                        )
                    }
                    _ => ControlFlow::Continue(()),
                }
            }
            Expr::BinaryOp {
                op:
                    BinaryOperator::PGLikeMatch
                    | BinaryOperator::PGILikeMatch
                    | BinaryOperator::PGNotLikeMatch
                    | BinaryOperator::PGNotILikeMatch,
                right,
                ..
            } => self.check_pattern(right, expr.span()),
            Expr::AnyOp {
                compare_op:
                    BinaryOperator::PGLikeMatch
                    | BinaryOperator::PGILikeMatch
                    | BinaryOperator::PGNotLikeMatch
                    | BinaryOperator::PGNotILikeMatch,
                ..
            }
            | Expr::AllOp {
                compare_op:
                    BinaryOperator::PGLikeMatch
                    | BinaryOperator::PGILikeMatch
                    | BinaryOperator::PGNotLikeMatch
                    | BinaryOperator::PGNotILikeMatch,
                ..
            } => {
                refuse(
                    "LIKE against a list of patterns is not allowed: write each LIKE with its pattern".into(),
                    expr.span(),
                )
            }
            Expr::In {
                target: InTarget::List(list),
                ..
            }
            | Expr::Tuple(list)
                if self.dialect == Dialect::Postgres && list.len() > MAX_LIST_ITEMS =>
            {
                refuse(
                    format!("a list holds at most {MAX_LIST_ITEMS} items on this store"),
                    expr.span(),
                )
            }
            Expr::Collate { collation, .. }
                if self.dialect == Dialect::Postgres
                    && !BYTE_COLLATIONS
                        .contains(&collation.to_string().trim_matches('"').to_ascii_lowercase().as_str()) =>
            {
                refuse(
                    format!(
                        "the collation {collation} is not allowed on this store; use one of: {}",
                        BYTE_COLLATIONS.join(", ")
                    ),
                    expr.span(),
                )
            }
            Expr::Value(value)
                if self.dialect == Dialect::Postgres
                    && matches!(
                        value.value,
                        Value::HexStringLiteral(_)
                            | Value::SingleQuotedByteStringLiteral(_)
                            | Value::DoubleQuotedByteStringLiteral(_)
                    ) =>
            {
                refuse(
                    "bit-string literals (X'…', B'…') are not allowed on this store".into(),
                    expr.span(),
                )
            }
            Expr::Cast {
                expr: inner,
                data_type,
                ..
            } if self.dialect == Dialect::Postgres
                && matches!(data_type, DataType::JSON | DataType::JSONB)
                && string_literal(inner).is_none() =>
            {
                refuse(
                    "a cast to json or jsonb must be of a string literal on this store (properties already is jsonb; a cast of a computed text takes ~70 times its size in memory)".into(),
                    expr.span(),
                )
            }
            // Every time zone PostgreSQL parses stays in a per-backend
            // cache (~24 KB each): 40 000 computed zone names took a reader
            // to 1 GB in 2 s. Zones are written, not computed.
            Expr::AtTimeZone { time_zone, .. }
                if self.dialect == Dialect::Postgres && string_literal(time_zone).is_none() =>
            {
                refuse(
                    "AT TIME ZONE takes a zone written as a string literal on this store \
                     (AT TIME ZONE 'Europe/Paris')"
                        .into(),
                    expr.span(),
                )
            }
            Expr::Cast {
                expr: inner,
                data_type,
                ..
            } if self.dialect == Dialect::Postgres
                && is_time_type(data_type)
                && !is_constant(inner) =>
            {
                refuse(
                    format!(
                        "a cast of computed text to {data_type} is not allowed on this store (it \
                         may name time zones): use to_timestamp(text, 'YYYY-MM-DD\"T\"HH24:MI:SS') \
                         or cast a literal"
                    ),
                    expr.span(),
                )
            }
            Expr::Trim {
                trim_what,
                trim_characters,
                ..
            } if self.dialect == Dialect::Postgres
                && (trim_what.is_some() || trim_characters.is_some()) =>
            {
                refuse(
                    "TRIM with a set of characters is not allowed on this store".into(),
                    expr.span(),
                )
            }
            Expr::Position { .. } if self.dialect == Dialect::Postgres => refuse(
                "POSITION is not allowed on this store (its search cannot be stopped)".into(),
                expr.span(),
            ),
            Expr::In { target, .. }
                if !matches!(target, InTarget::List(_) | InTarget::Subquery(_)) =>
            {
                refuse(
                    "`IN name` and `IN UNNEST(…)` are not supported: write IN (SELECT …)".into(),
                    expr.span(),
                )
            }
            Expr::CompoundIdentifier(parts)
                if self.dialect == Dialect::Postgres
                    && parts
                        .last()
                        .is_some_and(|last| self.is_record_function(last)) =>
            {
                refuse_record_function(expr.span())
            }
            Expr::CompoundFieldAccess { access_chain, .. }
                if self.dialect == Dialect::Postgres
                    && access_chain.iter().any(|access| match access {
                        AccessExpr::Dot(Expr::Identifier(field)) => self.is_record_function(field),
                        AccessExpr::Dot(Expr::CompoundIdentifier(parts)) => {
                            parts.iter().any(|part| self.is_record_function(part))
                        }
                        _ => false,
                    }) =>
            {
                refuse_record_function(expr.span())
            }
            // SQLite replaces every other use of a column that a WHERE or ON
            // term equates with a constant expression by a copy of it, until
            // nothing changes: `a = 'x' AND b = a || a AND c = b || b …`
            // doubles per term (21 terms: 2.2 GB in prepare).
            Expr::BinaryOp {
                left,
                op: BinaryOperator::Eq,
                right,
            } if self.dialect == Dialect::Sqlite
                && [(left, right), (right, left)].iter().any(|(column, other)| {
                    matches!(***column, Expr::Identifier(_) | Expr::CompoundIdentifier(_))
                        && column_references(other) > 1
                }) =>
            {
                refuse(
                    "a column may be compared with = to an expression naming at most one column on \
                     this store (SQLite copies such an expression into every other use of the \
                     column); compare with IS, or split the expression"
                        .into(),
                    expr.span(),
                )
            }
            Expr::Identifier(ident)
                if self.dialect == Dialect::Postgres
                    && self.relations.contains(&folded(ident, self.dialect)) =>
            {
                refuse(
                    format!(
                        "{ident} names a relation of this query: a whole row may not be used as a \
                         value on this store (name its columns, {ident}.column; or give the \
                         relation an alias that is not also a column name)"
                    ),
                    expr.span(),
                )
            }
            Expr::Wildcard(_) | Expr::QualifiedWildcard(..)
                if self.dialect == Dialect::Postgres =>
            {
                refuse(
                    "a whole row (t.*) may not be used as a value on this store: name its columns"
                        .into(),
                    expr.span(),
                )
            }
            Expr::Identifier(ident)
                if self.dialect == Dialect::Postgres
                    && ident.quote_style.is_none()
                    && SESSION_KEYWORDS.contains(&folded(ident, self.dialect).as_str()) =>
            {
                refuse(
                    format!("{ident} is not allowed: it names the session, not your data"),
                    expr.span(),
                )
            }
            Expr::Cast { data_type, .. } => self.check_type(data_type, expr.span()),
            Expr::TypedString(typed) => self.check_type(&typed.data_type, expr.span()),
            Expr::Value(value) => match value.value {
                Value::Placeholder(_) => refuse(
                    "parameters ($1, ?) are not supported: write the values in the text".into(),
                    expr.span(),
                ),
                _ => ControlFlow::Continue(()),
            },
            Expr::BinaryOp { op, .. }
            | Expr::AnyOp { compare_op: op, .. }
            | Expr::AllOp { compare_op: op, .. }
                if !allows_operator(self.dialect, op) =>
            {
                refuse_operator(op, expr.span())
            }
            Expr::BinaryOp { .. } => ControlFlow::Continue(()),
            Expr::UnaryOp { op, .. }
                if !matches!(
                    op,
                    UnaryOperator::Plus | UnaryOperator::Minus | UnaryOperator::Not
                ) =>
            {
                refuse(format!("the operator {op} is not allowed"), expr.span())
            }
            Expr::SimilarTo { .. } => {
                refuse("SIMILAR TO is not allowed: write LIKE".into(), expr.span())
            }
            Expr::Identifier(_)
            | Expr::CompoundIdentifier(_)
            | Expr::CompoundFieldAccess { .. }
            | Expr::JsonAccess { .. }
            | Expr::IsFalse(_)
            | Expr::IsNotFalse(_)
            | Expr::IsTrue(_)
            | Expr::IsNotTrue(_)
            | Expr::IsNull(_)
            | Expr::IsNotNull(_)
            | Expr::IsUnknown(_)
            | Expr::IsNotUnknown(_)
            | Expr::IsDistinctFrom(..)
            | Expr::IsNotDistinctFrom(..)
            | Expr::In { .. }
            | Expr::Between { .. }
            | Expr::AnyOp { .. }
            | Expr::AllOp { .. }
            | Expr::UnaryOp { .. }
            | Expr::AtTimeZone { .. }
            | Expr::Extract { .. }
            | Expr::Ceil { .. }
            | Expr::Floor { .. }
            | Expr::Position { .. }
            | Expr::Substring { .. }
            | Expr::Trim { .. }
            | Expr::Collate { .. }
            | Expr::Nested(_)
            | Expr::Case { .. }
            | Expr::Exists { .. }
            | Expr::Subquery(_)
            | Expr::GroupingSets(_)
            | Expr::Cube(_)
            | Expr::Rollup(_)
            | Expr::Tuple(_)
            | Expr::Interval(_)
            | Expr::Wildcard(_)
            | Expr::QualifiedWildcard(..) => ControlFlow::Continue(()),
            _ => refuse(
                "this kind of expression is not supported".into(),
                expr.span(),
            ),
        }
    }

    /// On PostgreSQL, at most [`MAX_COMPUTED_ITEMS`] items of lists and
    /// rows that are not literals, over the whole query.
    pub(super) fn count_computed_items(&mut self, expr: &Expr) -> ControlFlow<QueryFailure> {
        let items = match expr {
            Expr::In {
                target: InTarget::List(items),
                ..
            }
            | Expr::Tuple(items) => items,
            _ => return ControlFlow::Continue(()),
        };
        if self.dialect != Dialect::Postgres {
            return ControlFlow::Continue(());
        }
        self.computed_items += items.iter().filter(|i| !is_constant(i)).count();
        if self.computed_items > MAX_COMPUTED_ITEMS {
            return refuse(
                format!(
                    "at most {MAX_COMPUTED_ITEMS} list or row items that are not literals in one \
                     query on this store (compare with IN (SELECT …) instead)"
                ),
                expr.span(),
            );
        }
        ControlFlow::Continue(())
    }
}

/// Whether `expr` is an integer whatever its operands: a number, `length`
/// of anything, a cast to an integer type, or arithmetic of those.
fn is_integer(expr: &Expr) -> bool {
    match expr {
        Expr::Value(v) => matches!(v.value, Value::Number(..)),
        Expr::Nested(inner) => is_integer(inner),
        Expr::UnaryOp { op, expr } => {
            matches!(op, UnaryOperator::Minus | UnaryOperator::Plus) && is_integer(expr)
        }
        Expr::BinaryOp { left, op, right } => {
            matches!(
                op,
                BinaryOperator::Plus
                    | BinaryOperator::Minus
                    | BinaryOperator::Multiply
                    | BinaryOperator::Divide
                    | BinaryOperator::Modulo
            ) && is_integer(left)
                && is_integer(right)
        }
        Expr::Cast { data_type, .. } => matches!(
            data_type,
            DataType::Int(_)
                | DataType::Integer(_)
                | DataType::BigInt(_)
                | DataType::SmallInt(_)
                | DataType::Int4(_)
                | DataType::Int8(_)
                | DataType::Int2(_)
        ),
        Expr::Function(function) => {
            function.name.to_string().eq_ignore_ascii_case("length")
                || function
                    .name
                    .to_string()
                    .eq_ignore_ascii_case("char_length")
        }
        _ => false,
    }
}
