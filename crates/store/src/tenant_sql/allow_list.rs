//! Layer one of tenant SQL: what a query may say, read from its syntax tree.
//!
//! One statement, a query (`SELECT`, `WITH`, `VALUES`, set operations),
//! reading only `events`, `contacts` and the names its own `WITH` defines
//! where they are in scope; only the functions and types of the dialect's
//! allow-list; no table functions, parameters, locks, `SELECT INTO` or
//! custom operators. Everything not named here is refused, so a syntax this
//! walk does not know is refused too. The engine's own isolation (layer two)
//! does not rely on any of it.

use std::ops::ControlFlow;

use sqlparser::ast::{
    AccessExpr, BinaryOperator, DataType, Expr, FunctionArg, FunctionArgExpr, FunctionArguments,
    Ident, InTarget, ObjectName, ObjectNamePart, Query, Select, SelectItem, SetExpr, SetOperator,
    SetQuantifier, Spanned, Statement, TableFactor, UnaryOperator, Value, Visit, Visitor,
};
use sqlparser::dialect::{PostgreSqlDialect, SQLiteDialect};
use sqlparser::keywords::Keyword;
use sqlparser::parser::Parser;
use sqlparser::tokenizer::{Location, Span, Token, TokenWithSpan, Tokenizer};

use super::expansion::{Expansion, MAX_COPIED_NODES, is_constant};
use super::{Dialect, MAX_SQL_BYTES, Position, QueryFailure};

/// A query that passed layer one: the text to run, and its normal form
/// (the syntax tree printed back), which names it in the answer cache.
#[derive(Debug, Clone)]
pub struct CheckedQuery {
    dialect: Dialect,
    text: String,
    normalized: String,
}

impl CheckedQuery {
    /// The text as the tenant sent it: the engine runs exactly this.
    pub fn text(&self) -> &str {
        &self.text
    }

    /// The query's name in the answer cache: its tokens as written with
    /// comments and runs of spacing each reduced to one space; on SQLite,
    /// when a result column would be named by its exact text (`1  +  1`,
    /// neither aliased nor a column), the text itself.
    pub fn normalized(&self) -> &str {
        &self.normalized
    }

    pub fn dialect(&self) -> Dialect {
        self.dialect
    }

    /// A query that skipped layer one, so tests can show that layer two
    /// holds on its own. Nothing but tests calls it.
    #[doc(hidden)]
    pub fn skipping_layer_one_for_tests(sql: &str, dialect: Dialect) -> Self {
        Self {
            dialect,
            text: sql.to_string(),
            normalized: sql.to_string(),
        }
    }
}

/// Nesting the parser accepts at most (its own default is 50).
const MAX_DEPTH: usize = 40;
/// Tokens that can add a level to the syntax tree (operators, keywords,
/// parentheses) at most. A chain such as `1+1+…` or `a OR b OR …` is parsed
/// in a loop but nests one level per operator, and every walk of the tree
/// (the checks, printing, dropping it) recurses once per level.
const MAX_STRUCTURE_TOKENS: usize = 1_000;
/// The tree is parsed, walked and dropped on a thread of its own with this
/// much stack (reserved, not used), which holds a tree at the limit above
/// even in an unoptimised build.
const CHECK_STACK_BYTES: usize = 256 * 1024 * 1024;

/// Layer one: refuses what a tenant's query may not say, with the reason
/// and, when known, where.
pub fn check(sql: &str, dialect: Dialect) -> Result<CheckedQuery, QueryFailure> {
    if sql.len() > MAX_SQL_BYTES {
        return Err(QueryFailure::refused(format!(
            "the SQL text is {} bytes; at most {MAX_SQL_BYTES} are allowed",
            sql.len()
        )));
    }
    if sql.trim().is_empty() {
        return Err(QueryFailure::refused("the SQL text is empty"));
    }
    if sql.contains('\0') {
        return Err(QueryFailure::refused(
            "the SQL text contains a NUL character",
        ));
    }
    let text = sql.to_string();
    std::thread::Builder::new()
        .name("keyflow-sql-check".into())
        .stack_size(CHECK_STACK_BYTES)
        .spawn(move || check_on_this_thread(text, dialect))
        .map_err(|e| {
            QueryFailure::Store(crate::StoreError::Config(format!(
                "cannot start the query check: {e}"
            )))
        })?
        .join()
        .map_err(|_| {
            QueryFailure::Store(crate::StoreError::Config("the query check failed".into()))
        })?
}

fn check_on_this_thread(sql: String, dialect: Dialect) -> Result<CheckedQuery, QueryFailure> {
    let tokens = match dialect {
        Dialect::Sqlite => Tokenizer::new(&SQLiteDialect {}, &sql).tokenize_with_location(),
        Dialect::Postgres => Tokenizer::new(&PostgreSqlDialect {}, &sql).tokenize_with_location(),
    }
    .map_err(|e| QueryFailure::Refused {
        reason: format!("the SQL could not be read: {}", e.message),
        position: Some(Position {
            line: e.location.line,
            column: e.location.column,
        }),
    })?;
    let structure = tokens.iter().filter(|t| adds_structure(&t.token)).count();
    if structure > MAX_STRUCTURE_TOKENS {
        return Err(QueryFailure::refused(format!(
            "the query is too complex: {structure} operators, keywords and parentheses; at most \
             {MAX_STRUCTURE_TOKENS} (a long chain of OR or UNION is often an IN (…) list)"
        )));
    }
    if let Some(at) = using_an_operator(&tokens) {
        return Err(QueryFailure::Refused {
            reason: "ORDER BY … USING an operator is not allowed: write ASC or DESC".into(),
            position: position(at),
        });
    }
    let parsed = match dialect {
        Dialect::Sqlite => parse(&SQLiteDialect {}, &sql),
        Dialect::Postgres => parse(&PostgreSqlDialect {}, &sql),
    }?;
    let statement = match parsed.as_slice() {
        [one] => one,
        many => {
            return Err(QueryFailure::refused(format!(
                "one statement only; this text holds {}",
                many.len()
            )));
        }
    };
    let Statement::Query(query) = statement else {
        let kind = statement
            .to_string()
            .split_whitespace()
            .next()
            .unwrap_or("this")
            .to_ascii_uppercase();
        return Err(QueryFailure::Refused {
            reason: format!("only a query (SELECT or WITH … SELECT) may run; {kind} may not"),
            position: position(statement.span()),
        });
    };
    let mut relations = RelationNames {
        dialect,
        names: std::collections::HashSet::new(),
    };
    let _ = statement.visit(&mut relations);
    let mut walker = Walker {
        dialect,
        frames: Vec::new(),
        pattern_matches: 0,
        computed_items: 0,
        expansion: Expansion::new(dialect),
        relations: relations.names,
    };
    if let ControlFlow::Break(refusal) = statement.visit(&mut walker) {
        return Err(refusal);
    }
    let normalized = if dialect == Dialect::Sqlite && names_columns_by_text(&query.body) {
        sql.clone()
    } else {
        normal_form(&sql, &tokens)
    };
    let text = super::fences::fenced(&sql, statement, &tokens, dialect)?;
    Ok(CheckedQuery {
        dialect,
        text,
        normalized,
    })
}

/// Where `USING` names a sort operator (`ORDER BY x USING <`) rather than
/// join columns (`JOIN … USING (id)`, always in parentheses).
fn using_an_operator(tokens: &[TokenWithSpan]) -> Option<Span> {
    let mut meaningful = tokens
        .iter()
        .filter(|t| !matches!(t.token, Token::Whitespace(_)));
    while let Some(t) = meaningful.next() {
        if let Token::Word(word) = &t.token
            && word.keyword == Keyword::USING
            && word.quote_style.is_none()
            && !matches!(
                meaningful.clone().next().map(|n| &n.token),
                Some(Token::LParen)
            )
        {
            return Some(t.span);
        }
    }
    None
}

fn too_complex_once_prepared(nodes: u64) -> String {
    format!(
        "the query is too complex once prepared: its names and comparisons copy expressions \
         into {nodes} more nodes; at most {MAX_COPIED_NODES} (nested BETWEEN or IN, a result \
         alias or column number used inside another's expression, or a WITH query read by \
         several names that are themselves read several times)"
    )
}

/// Whether a token can add a level to the syntax tree: anything but
/// spacing, comments, separators, literals and plain names.
fn adds_structure(token: &Token) -> bool {
    match token {
        Token::Whitespace(_)
        | Token::Comma
        | Token::Period
        | Token::SemiColon
        | Token::Number(..)
        | Token::SingleQuotedString(_)
        | Token::DoubleQuotedString(_)
        | Token::DollarQuotedString(_)
        | Token::NationalStringLiteral(_)
        | Token::EscapedStringLiteral(_)
        | Token::UnicodeStringLiteral(_)
        | Token::HexStringLiteral(_) => false,
        Token::Word(word) => word.keyword != Keyword::NoKeyword,
        _ => true,
    }
}

/// Whether SQLite would name one of the answer's columns by its text as
/// written: a result column that is neither aliased, a column reference nor
/// `*` (`1  +  1` is named `1  +  1`, spacing and comments included).
fn names_columns_by_text(body: &SetExpr) -> bool {
    match body {
        SetExpr::Select(select) => select.projection.iter().any(|item| match item {
            SelectItem::UnnamedExpr(expr) => {
                !matches!(expr, Expr::Identifier(_) | Expr::CompoundIdentifier(_))
            }
            SelectItem::ExprWithAlias { .. }
            | SelectItem::Wildcard(_)
            | SelectItem::QualifiedWildcard(..) => false,
            _ => true,
        }),
        SetExpr::SetOperation { left, right, .. } => {
            names_columns_by_text(left) || names_columns_by_text(right)
        }
        SetExpr::Query(inner) => names_columns_by_text(&inner.body),
        _ => false,
    }
}

/// The cache identity of a query: its tokens exactly as written,
/// comments and runs of spacing each reduced to one space. (Not less: a
/// printed syntax tree loses the spelling of literals and names.) Linear in
/// the text: the tokens' positions are walked in order.
fn normal_form(sql: &str, tokens: &[TokenWithSpan]) -> String {
    let mut cursor = Cursor::new(sql);
    let mut out = String::with_capacity(sql.len());
    let mut spaced = false;
    for t in tokens {
        if let Token::Whitespace(_) | Token::EOF = t.token {
            spaced = true;
            continue;
        }
        let start = cursor.advance_to(t.span.start);
        let end = cursor.advance_to(t.span.end);
        if spaced && !out.is_empty() {
            out.push(' ');
        }
        spaced = false;
        out.push_str(sql.get(start..end).unwrap_or_default());
    }
    out
}

/// A position in the text, moved forward only.
pub(super) struct Cursor<'a> {
    text: &'a str,
    line: u64,
    column: u64,
    byte: usize,
}

impl<'a> Cursor<'a> {
    pub(super) fn new(text: &'a str) -> Self {
        Self {
            text,
            line: 1,
            column: 1,
            byte: 0,
        }
    }

    /// The byte offset of `at` (the tokenizer's line and column, counted in
    /// characters), reached from the cursor's current position.
    pub(super) fn advance_to(&mut self, at: Location) -> usize {
        while (self.line, self.column) < (at.line, at.column) {
            let Some(c) = self.text[self.byte..].chars().next() else {
                break;
            };
            self.byte += c.len_utf8();
            if c == '\n' {
                self.line += 1;
                self.column = 1;
            } else {
                self.column += 1;
            }
        }
        self.byte
    }
}

fn parse(
    dialect: &dyn sqlparser::dialect::Dialect,
    sql: &str,
) -> Result<Vec<Statement>, QueryFailure> {
    Parser::new(dialect)
        .with_recursion_limit(MAX_DEPTH)
        .try_with_sql(sql)
        .and_then(|mut parser| parser.parse_statements())
        .map_err(|e| {
            let text = e.to_string();
            let text = text.strip_prefix("sql parser error: ").unwrap_or(&text);
            QueryFailure::Refused {
                reason: format!("the SQL could not be read: {text}"),
                position: position_in_message(text),
            }
        })
}

/// The parser reports positions as "… at Line: 3, Column: 7".
fn position_in_message(text: &str) -> Option<Position> {
    let rest = &text[text.rfind("Line: ")? + 6..];
    let (line, rest) = rest.split_once(", Column: ")?;
    let column: String = rest.chars().take_while(char::is_ascii_digit).collect();
    Some(Position {
        line: line.trim().parse().ok()?,
        column: column.parse().ok()?,
    })
}

fn position(span: Span) -> Option<Position> {
    (span.start.line > 0).then_some(Position {
        line: span.start.line,
        column: span.start.column,
    })
}

fn refuse(reason: String, span: Span) -> ControlFlow<QueryFailure> {
    ControlFlow::Break(QueryFailure::Refused {
        reason,
        position: position(span),
    })
}

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

struct Walker {
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

/// PostgreSQL matches `LIKE` in time |text| × |pattern| and checks for
/// cancellation only between rows, so a query's patterns are literals of at
/// most this many bytes (as SQLite's `SQLITE_LIMIT_LIKE_PATTERN_LENGTH`)...
pub const MAX_PATTERN_BYTES: usize = 100;
/// ...and one query holds at most this many: each costs at most ~0.16 s on
/// a 1 MiB value (measured), so one row's matches stay under ~1.6 s.
pub const MAX_PATTERN_MATCHES: usize = 10;
/// The longest `to_char` format and `char(n)`/`varchar(n)` a query may
/// write on PostgreSQL (a 1 MiB format of `J`s prints 7 MiB; `char(n)`
/// pads to n).
const MAX_FORMAT_BYTES: usize = 200;
/// Commas cost nothing in the structure budget, so on PostgreSQL, where one
/// row's expression is never interrupted, a call takes at most this many
/// arguments (`greatest(b, b, …)` with 4 000 compared 128 MB each)...
const MAX_ARGUMENTS: usize = 100;
/// ...and an `IN (…)` list or a row `(a, b, …)` at most this many items...
const MAX_LIST_ITEMS: usize = 1_000;
/// ...of which, over the whole query, at most this many are computed rather
/// than written as literals: PostgreSQL holds every item's value of a row at
/// once (1 000 items of 256 KiB held 250 MB).
pub const MAX_COMPUTED_ITEMS: usize = 64;
/// Collations that compare bytes (an ICU collation took 0.7 ms per
/// comparison of 256 KiB).
const BYTE_COLLATIONS: &[&str] = &["c", "posix", "ucs_basic", "default"];
const MAX_TYPE_LENGTH: u64 = 10_000;

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

/// PostgreSQL functions outside the allow-list that `alias.name` or
/// `(alias).name` would call on a whole row: those whose first parameter
/// takes any row (`record`, `"any"`, `anyelement`, `anycompatible`,
/// `anynonarray`) and that need no other argument. A test compares this list
/// with the server's `pg_proc`, so a new PostgreSQL cannot add one unseen.
pub const RECORD_FUNCTIONS: &[&str] = &[
    "any_out",
    "anycompatible_out",
    "anyelement_out",
    "anynonarray_out",
    "array_agg",
    "concat",
    "hash_record",
    "hash_record_extended",
    "json_agg",
    "json_build_array",
    "json_build_object",
    "json_populate_record",
    "jsonb_agg",
    "jsonb_build_array",
    "jsonb_build_object",
    "jsonb_populate_record",
    "mode",
    "num_nonnulls",
    "num_nulls",
    "pg_collation_for",
    "pg_column_compression",
    "pg_column_size",
    "pg_typeof",
    "quote_literal",
    "quote_nullable",
    "record_out",
    "record_send",
    "row_to_json",
    "to_json",
    "to_jsonb",
];

/// PostgreSQL's SQL-standard session values written without parentheses,
/// which the parser reads as plain names.
const SESSION_KEYWORDS: &[&str] = &[
    "current_catalog",
    "current_role",
    "current_schema",
    "current_user",
    "session_user",
    "user",
];

fn refuse_record_function(span: Span) -> ControlFlow<QueryFailure> {
    refuse(
        "a function called as a column (alias.function) is not allowed".into(),
        span,
    )
}

/// Operators every store runs in time linear in their operands.
const COMMON_OPERATORS: &[BinaryOperator] = &[
    BinaryOperator::Plus,
    BinaryOperator::Minus,
    BinaryOperator::Multiply,
    BinaryOperator::Divide,
    BinaryOperator::Modulo,
    BinaryOperator::StringConcat,
    BinaryOperator::Gt,
    BinaryOperator::Lt,
    BinaryOperator::GtEq,
    BinaryOperator::LtEq,
    BinaryOperator::Eq,
    BinaryOperator::NotEq,
    BinaryOperator::And,
    BinaryOperator::Or,
    BinaryOperator::BitwiseOr,
    BinaryOperator::BitwiseAnd,
    // JSON: one value out of a document.
    BinaryOperator::Arrow,
    BinaryOperator::LongArrow,
];

const SQLITE_OPERATORS: &[BinaryOperator] = &[BinaryOperator::Is, BinaryOperator::IsNot];

/// Left out on PostgreSQL on purpose: `^`, which builds a number of
/// hundreds of thousands of digits from two short ones and spends a tenth of
/// a second on each, uninterruptibly; JSON containment and key-set tests
/// (`@>`, `<@`, `?|`, `?&`) compare every element with every other and
/// check for cancellation nowhere: measured, one `@>` of two 100 000-element
/// arrays ran 72 s past a 1 s `statement_timeout`. JSON paths (`@?`, `@@`),
/// regular expressions and array overlap go with them; `->>` and `=` say
/// the same things in linear time.
const POSTGRES_OPERATORS: &[BinaryOperator] = &[
    BinaryOperator::PGBitwiseXor,
    BinaryOperator::PGBitwiseShiftLeft,
    BinaryOperator::PGBitwiseShiftRight,
    BinaryOperator::PGLikeMatch,
    BinaryOperator::PGILikeMatch,
    BinaryOperator::PGNotLikeMatch,
    BinaryOperator::PGNotILikeMatch,
    BinaryOperator::PGStartsWith,
    BinaryOperator::HashArrow,
    BinaryOperator::HashLongArrow,
    // One key looked up: linear at worst.
    BinaryOperator::Question,
];

fn allows_operator(dialect: Dialect, op: &BinaryOperator) -> bool {
    let own = match dialect {
        Dialect::Sqlite => SQLITE_OPERATORS,
        Dialect::Postgres => POSTGRES_OPERATORS,
    };
    COMMON_OPERATORS.contains(op) || own.contains(op)
}

fn refuse_operator(op: &BinaryOperator, span: Span) -> ControlFlow<QueryFailure> {
    refuse(
        format!(
            "the operator {op} is not allowed (compare single values instead, for example properties->>'plan' = 'pro')"
        ),
        span,
    )
}

/// Type names a cast may name (lower case, without length or precision).
const ALLOWED_TYPES: &[&str] = &[
    "bigint",
    "bool",
    "boolean",
    "char",
    "character",
    "character varying",
    "date",
    "decimal",
    "double",
    "double precision",
    "float",
    "float4",
    "float8",
    "int",
    "int2",
    "int4",
    "int8",
    "integer",
    "interval",
    "json",
    "jsonb",
    "numeric",
    "real",
    "smallint",
    "text",
    "time",
    "timestamp",
    "timestamp with time zone",
    "timestamp without time zone",
    "timestamptz",
    "varchar",
];

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

impl Walker {
    /// What one expression may say, whatever its children say.
    fn check_expr(&mut self, expr: &Expr) -> ControlFlow<QueryFailure> {
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
    fn count_computed_items(&mut self, expr: &Expr) -> ControlFlow<QueryFailure> {
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

#[cfg(test)]
mod tests {
    use super::super::shapes::{
        constant_chain, doubling_with_queries, nested_aliases, nested_between, nested_in,
        numbered_columns, with_reads_through_subqueries,
    };
    use super::*;

    fn refusal(sql: &str, dialect: Dialect) -> String {
        match check(sql, dialect) {
            Ok(_) => panic!("accepted: {sql}"),
            Err(e) => e.to_string(),
        }
    }

    fn both(sql: &str) -> [Result<CheckedQuery, QueryFailure>; 2] {
        [check(sql, Dialect::Sqlite), check(sql, Dialect::Postgres)]
    }

    #[test]
    fn copies_that_double_per_level_are_refused() {
        // PostgreSQL: BETWEEN copies its left operand, so 30 levels are 2^30
        // copies; a few are nothing.
        let Err(QueryFailure::Refused {
            reason,
            position: Some(_),
        }) = check(&nested_between(30), Dialect::Postgres)
        else {
            panic!("accepted, or refused without a position")
        };
        assert!(reason.contains("too complex once prepared"), "{reason}");
        check(&nested_between(5), Dialect::Postgres).unwrap();
        // ...and `IN` with computed items copies it once per item.
        let refused = refusal(&nested_in(12), Dialect::Postgres);
        assert!(refused.contains("too complex once prepared"), "{refused}");
        // Literal items share one comparison: a thousand of them copy nothing.
        let literals = vec!["'x'"; 1_000].join(", ");
        check(
            &format!(
                "SELECT count(*) FROM events e WHERE (e.name IN ({literals})) IN (true, false)"
            ),
            Dialect::Postgres,
        )
        .unwrap();
        // SQLite: a result alias used in WHERE is a copy of its expression.
        let refused = refusal(&nested_aliases(12), Dialect::Sqlite);
        assert!(refused.contains("too complex once prepared"), "{refused}");
        check(&nested_aliases(4), Dialect::Sqlite).unwrap();
        // Many uses of one small alias are many copies too.
        let uses = vec!["t"; 2_000].join(", ");
        let refused = refusal(
            &format!(
                "SELECT name || name || name || name || name AS t FROM events WHERE 'x' IN ({uses})"
            ),
            Dialect::Sqlite,
        );
        assert!(refused.contains("too complex once prepared"), "{refused}");
        // Ordinary aliases, BETWEEN and IN pass on both.
        for sql in [
            "SELECT name AS n, count(*) AS c FROM events GROUP BY n ORDER BY c DESC",
            "SELECT count(*) FROM events WHERE timestamp BETWEEN '2026-01-01' AND '2026-02-01'",
            "SELECT name || '!' AS shout FROM events WHERE shout LIKE 'a%' AND name IN (name, 'x')",
        ] {
            for result in both(sql) {
                result.unwrap();
            }
        }
    }

    #[test]
    fn sqlite_copies_of_numbered_columns_and_pattern_matches_are_counted() {
        // `GROUP BY 1` stands for a copy of the first result column; nested,
        // (k+1)^n copies (5 levels of 10 took 1 GB in SQLite's prepare).
        let refused = refusal(&numbered_columns(5, "1", 10), Dialect::Sqlite);
        assert!(refused.contains("too complex once prepared"), "{refused}");
        check(
            "SELECT name, count(*) FROM events GROUP BY 1 ORDER BY 2 DESC, 1",
            Dialect::Sqlite,
        )
        .unwrap();
        // A LIKE weighs like many nodes: used again through an alias or a
        // column number, its copies add up fast (each is |text| × |pattern|
        // of work inside one row, where no time limit can stop it).
        let uses = vec!["l"; 25].join(" OR ");
        let refused = refusal(
            &format!("SELECT name LIKE '%a%' AS l FROM events WHERE {uses}"),
            Dialect::Sqlite,
        );
        assert!(refused.contains("too complex once prepared"), "{refused}");
        let refused = refusal(
            &format!(
                "SELECT name LIKE '%a%' FROM events GROUP BY {}",
                vec!["1"; 30].join(",")
            ),
            Dialect::Sqlite,
        );
        assert!(refused.contains("too complex once prepared"), "{refused}");
        check(
            "SELECT name LIKE '%a%' AS l, count(*) FROM events WHERE l GROUP BY 1",
            Dialect::Sqlite,
        )
        .unwrap();
        // At most ten pattern matches in a query, on SQLite too.
        let likes = ["name LIKE '%a%'"; 11].join(" OR ");
        for result in both(&format!("SELECT count(*) FROM events WHERE {likes}")) {
            let Err(refused) = result else {
                panic!("accepted eleven LIKEs")
            };
            assert!(refused.to_string().contains("LIKE"), "{refused}");
        }
    }

    #[test]
    fn sqlite_copies_of_with_queries_and_hidden_aliases_are_counted() {
        // SQLite copies a WITH query for every name that reads it, before
        // anything is materialised: 20 doubling levels took 3.1 GB.
        let refused = refusal(&doubling_with_queries(20), Dialect::Sqlite);
        assert!(refused.contains("too complex once prepared"), "{refused}");
        check(&doubling_with_queries(4), Dialect::Sqlite).unwrap();
        check(&doubling_with_queries(20), Dialect::Postgres).unwrap();
        check(
            "WITH d AS (SELECT name, count(*) AS n FROM events GROUP BY name) \
             SELECT a.name, b.n FROM d a JOIN d b ON a.name = b.name",
            Dialect::Sqlite,
        )
        .unwrap();
        // A second column of the same name does not hide the first's size.
        let mut condition = "a10 > ''".to_string();
        for k in (0..10).rev() {
            condition = format!(
                "EXISTS (SELECT {} AS a{}, 0 AS a{} WHERE {condition})",
                vec![format!("a{k}"); 4].join(" || "),
                k + 1,
                k + 1
            );
        }
        let sql = format!("SELECT name || name AS a0, 0 AS a0 FROM events WHERE {condition}");
        let refused = refusal(&sql, Dialect::Sqlite);
        assert!(refused.contains("too complex once prepared"), "{refused}");
        // Column numbers count through parentheses, `+` and COLLATE.
        for term in ["(1)", "+1", "1 COLLATE BINARY"] {
            let refused = refusal(&numbered_columns(4, term, 10), Dialect::Sqlite);
            assert!(
                refused.contains("too complex once prepared"),
                "{term}: {refused}"
            );
        }
    }

    #[test]
    fn sqlite_constant_chains_and_with_reads_in_subqueries_are_bounded() {
        // Constant propagation: each term copies the one before twice.
        let refused = refusal(&constant_chain(), Dialect::Sqlite);
        assert!(refused.contains("at most one column"), "{refused}");
        for sql in [
            "SELECT count(*) FROM events e JOIN contacts c ON c.id = e.contact_id WHERE e.name = 'x'",
            "SELECT count(*) FROM events WHERE name = upper(anonymous_id)",
            "SELECT count(*) FROM events WHERE name IS id || id",
        ] {
            check(sql, Dialect::Sqlite).unwrap();
        }
        check(&constant_chain(), Dialect::Postgres).unwrap();
        // A WITH query read through scalar subqueries, doubling per level.
        let refused = refusal(&with_reads_through_subqueries(12), Dialect::Sqlite);
        assert!(refused.contains("too complex once prepared"), "{refused}");
        // ...or copied through an alias.
        let sql = format!(
            "WITH c AS (SELECT count(*) AS v FROM events WHERE anonymous_id IN ({})) \
             SELECT (SELECT v FROM c) AS t FROM events WHERE t IN ({}) LIMIT 1",
            vec!["anonymous_id"; 900].join(","),
            vec!["t"; 200].join(",")
        );
        let refused = refusal(&sql, Dialect::Sqlite);
        assert!(refused.contains("too complex once prepared"), "{refused}");
        check(
            "WITH c AS (SELECT count(*) AS v FROM events) SELECT (SELECT v FROM c) AS t, name FROM events WHERE t > 1",
            Dialect::Sqlite,
        )
        .unwrap();
    }

    #[test]
    fn named_windows_are_refused_on_sqlite() {
        let sql =
            "SELECT count(*) OVER w + count(*) OVER w FROM events WINDOW w AS (PARTITION BY name)";
        let refused = refusal(sql, Dialect::Sqlite);
        assert!(refused.contains("named windows"), "{refused}");
        check(sql, Dialect::Postgres).unwrap();
        check(
            "SELECT count(*) OVER (PARTITION BY name ORDER BY id) FROM events",
            Dialect::Sqlite,
        )
        .unwrap();
    }

    #[test]
    fn whole_rows_are_not_values_on_postgres() {
        for sql in [
            "SELECT t::text FROM events t",
            "SELECT length('' || t) FROM (SELECT name, name AS n2 FROM events) t",
            "SELECT count(e) FROM events e",
            "WITH w AS (SELECT name FROM events) SELECT w FROM w",
            "SELECT CAST(e.* AS text) FROM events e",
        ] {
            let refused = refusal(sql, Dialect::Postgres);
            assert!(refused.contains("whole row"), "{sql}: {refused}");
        }
        for sql in [
            "SELECT e.name, count(*) FROM events e GROUP BY e.name",
            "SELECT t.* FROM (SELECT name FROM events) t",
            "SELECT name FROM events",
        ] {
            check(sql, Dialect::Postgres).unwrap();
        }
        // SQLite has no whole-row values: a name there is a column or nothing.
        check("SELECT e.name FROM events e", Dialect::Sqlite).unwrap();
    }

    #[test]
    fn many_names_and_many_aliases_are_checked_quickly() {
        let aliases = (0..6_200)
            .map(|i| format!("1 b{i}"))
            .collect::<Vec<_>>()
            .join(",");
        let names = vec!["z"; 23_000].join(",");
        let sql = format!("SELECT {aliases} FROM events WHERE z IN ({names})");
        assert!(sql.len() < MAX_SQL_BYTES);
        let started = std::time::Instant::now();
        let _ = check(&sql, Dialect::Sqlite);
        assert!(
            started.elapsed() < std::time::Duration::from_secs(2),
            "{:?}",
            started.elapsed()
        );
    }

    #[test]
    fn time_zones_are_written_not_computed_on_postgres() {
        for sql in [
            "SELECT now() AT TIME ZONE ('UTC' || name) FROM events",
            "SELECT date_trunc('day', now(), 'ABD+' || name) FROM events",
            "SELECT CAST('2020-01-01 00:00 ' || name AS timestamptz) FROM events",
            "SELECT (properties->>'at')::timestamp FROM events",
            "SELECT CAST(name AS date) FROM events",
        ] {
            let refused = refusal(sql, Dialect::Postgres);
            assert!(refused.contains("on this store"), "{sql}: {refused}");
        }
        for sql in [
            "SELECT now() AT TIME ZONE 'Europe/Paris', date_trunc('day', now(), 'UTC')",
            "SELECT CAST('2020-01-01' AS date), '2020-01-01 10:00+02'::timestamptz",
            "SELECT to_timestamp(properties->>'at', 'YYYY-MM-DD\"T\"HH24:MI:SS') FROM events",
            "SELECT date_trunc('day', timestamp) FROM events",
        ] {
            check(sql, Dialect::Postgres).unwrap();
        }
    }

    #[test]
    fn computed_list_items_are_counted_on_postgres() {
        let items = |n: usize| {
            (0..n)
                .map(|i| format!("e.name || '{i}'"))
                .collect::<Vec<_>>()
                .join(", ")
        };
        let at_most = format!(
            "SELECT count(*) FROM events e WHERE e.id IN ({})",
            items(MAX_COMPUTED_ITEMS)
        );
        check(&at_most, Dialect::Postgres).unwrap();
        let past = format!(
            "SELECT count(*) FROM events e WHERE e.id IN ({}) OR (e.id, e.name) = ('a', 'b')",
            items(MAX_COMPUTED_ITEMS)
        );
        let refused = refusal(&past, Dialect::Postgres);
        assert!(refused.contains("not literals"), "{refused}");
        check(&past, Dialect::Sqlite).unwrap();
        // Rows of literals are literals.
        let rows = vec!["('a', 'b')"; 300].join(", ");
        check(
            &format!("SELECT count(*) FROM events e WHERE (e.id, e.name) IN ({rows})"),
            Dialect::Postgres,
        )
        .unwrap();
    }

    #[test]
    fn recursive_with_must_union_all_on_postgres() {
        let distinct = "WITH RECURSIVE r(n) AS (SELECT 1 UNION SELECT n + 1 FROM r WHERE n < 10) \
                        SELECT count(*) FROM r";
        let refused = refusal(distinct, Dialect::Postgres);
        assert!(refused.contains("UNION ALL"), "{refused}");
        check(distinct, Dialect::Sqlite).unwrap();
        let all = distinct.replace("UNION", "UNION ALL");
        for result in both(&all) {
            result.unwrap();
        }
        // Not recursive: UNION is an ordinary set operation.
        check(
            "WITH r AS (SELECT name FROM events UNION SELECT email FROM contacts) SELECT * FROM r",
            Dialect::Postgres,
        )
        .unwrap();
    }

    #[test]
    fn sort_operators_are_refused_but_join_columns_are_not() {
        for sql in [
            "SELECT name FROM events ORDER BY name USING <",
            "SELECT name FROM events ORDER BY name USING/* */~<~",
            "SELECT count(*) OVER (ORDER BY name USING >) FROM events",
        ] {
            for result in both(sql) {
                let Err(refused) = result else {
                    panic!("accepted: {sql}")
                };
                assert!(refused.to_string().contains("USING"), "{refused}");
            }
        }
        for result in both("SELECT count(*) FROM events e JOIN contacts c USING (id)") {
            result.unwrap();
        }
    }

    #[test]
    fn plain_reads_of_the_two_relations_pass() {
        for sql in [
            "SELECT * FROM events",
            "select count(*) from contacts where email like '%@example.com'",
            "SELECT name, count(*) AS n FROM events GROUP BY name ORDER BY n DESC LIMIT 10",
            "WITH t AS (SELECT contact_id FROM events) SELECT count(DISTINCT contact_id) FROM t",
            "SELECT e.name FROM events e JOIN contacts c ON c.id = e.contact_id",
            "SELECT name FROM events UNION ALL SELECT email FROM contacts",
            "SELECT row_number() OVER (PARTITION BY name ORDER BY timestamp) FROM events",
            "SELECT * FROM (SELECT * FROM events) AS sub WHERE sub.id IN (SELECT id FROM events)",
            "WITH RECURSIVE n(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM n WHERE x < 5) SELECT * FROM n",
            "SELECT CAST(timestamp AS text) FROM events -- a comment",
            "/* leading */ SELECT 1;",
        ] {
            for result in both(sql) {
                assert!(result.is_ok(), "{sql}: {:?}", result.err());
            }
        }
    }

    #[test]
    fn other_relations_are_refused_however_they_are_spelled() {
        for sql in [
            "SELECT * FROM api_keys",
            "SELECT * FROM \"api_keys\"",
            "SELECT * FROM main.events",
            "SELECT * FROM temp.events",
            "SELECT * FROM public.events",
            "SELECT * FROM sqlite_master",
            "SELECT * FROM sqlite_schema",
            "SELECT * FROM sqlite_temp_master",
            "SELECT * FROM information_schema.tables",
            "SELECT * FROM pg_catalog.pg_stat_activity",
            "SELECT * FROM pg_stat_activity",
            "SELECT * FROM pg_settings",
            "SELECT * FROM event_counts_hourly",
            "SELECT * FROM events WHERE id IN (SELECT id FROM operators)",
            "SELECT (SELECT secret_hash FROM sessions LIMIT 1)",
            "SELECT * FROM events JOIN audit_log ON true",
            "SELECT name FROM events UNION SELECT name FROM workspaces",
        ] {
            for dialect in [Dialect::Sqlite, Dialect::Postgres] {
                let reason = refusal(sql, dialect);
                assert!(reason.contains("not available"), "{sql}: {reason}");
            }
        }
    }

    #[test]
    fn with_names_count_only_where_they_are_in_scope() {
        // A WITH name of a subquery does not cover the outer query.
        let sql = "SELECT * FROM (WITH api_keys AS (SELECT 1) SELECT * FROM api_keys) x, api_keys";
        assert!(refusal(sql, Dialect::Sqlite).contains("api_keys"));
        // Without RECURSIVE, an earlier WITH query does not see a later one.
        let sql = "WITH a AS (SELECT * FROM api_keys), api_keys AS (SELECT 1) SELECT * FROM a";
        assert!(refusal(sql, Dialect::Postgres).contains("api_keys"));
        // A later one sees an earlier one, and the body sees all.
        let sql = "WITH a AS (SELECT 1 AS x), b AS (SELECT x FROM a) SELECT * FROM a, b";
        assert!(check(sql, Dialect::Sqlite).is_ok());
        // A CTE named like a real table is the tenant's own rows.
        let sql = "WITH api_keys AS (SELECT id FROM events) SELECT * FROM api_keys";
        assert!(check(sql, Dialect::Postgres).is_ok());
    }

    #[test]
    fn writes_ddl_and_settings_are_refused() {
        for sql in [
            "DELETE FROM events",
            "UPDATE contacts SET email = NULL",
            "INSERT INTO events VALUES (1)",
            "DROP TABLE events",
            "CREATE TABLE x (a int)",
            "ATTACH DATABASE '/tmp/x.db' AS x",
            "PRAGMA table_info(api_keys)",
            "SET ROLE postgres",
            "RESET ROLE",
            "COPY events TO '/tmp/x'",
            "VACUUM",
            "BEGIN",
            "SELECT * INTO stolen FROM events",
            "SELECT * FROM events FOR UPDATE",
            "WITH d AS (DELETE FROM events RETURNING *) SELECT * FROM d",
        ] {
            for dialect in [Dialect::Sqlite, Dialect::Postgres] {
                let result = check(sql, dialect);
                assert!(result.is_err(), "{sql} passed on {dialect:?}");
            }
        }
    }

    #[test]
    fn several_statements_are_refused() {
        for sql in [
            "SELECT 1; SELECT 2",
            "SELECT 1; DELETE FROM events",
            "SELECT 1;\n/* x */ ; SELECT 2",
        ] {
            assert!(
                refusal(sql, Dialect::Sqlite).contains("one statement"),
                "{sql}"
            );
        }
    }

    #[test]
    fn functions_outside_the_list_are_refused_with_their_position() {
        for sql in [
            "SELECT load_extension('x')",
            "SELECT readfile('/etc/passwd')",
            "SELECT writefile('/tmp/x', 'y')",
            "SELECT pg_read_file('/etc/passwd')",
            "SELECT pg_ls_dir('.')",
            "SELECT lo_import('/etc/passwd')",
            "SELECT pg_sleep(10)",
            "SELECT set_config('role', 'postgres', true)",
            "SELECT current_setting('is_superuser')",
            "SELECT dblink('host=x', 'select 1')",
            "SELECT pg_catalog.count(*) FROM events",
            "SELECT randomblob(1000000000)",
            "SELECT sqlite_version()",
            "SELECT \"pg_sleep\"(1)",
        ] {
            for dialect in [Dialect::Sqlite, Dialect::Postgres] {
                let result = check(sql, dialect);
                let Err(QueryFailure::Refused { reason, position }) = result else {
                    panic!("{sql} passed on {dialect:?}");
                };
                assert!(reason.contains("not allowed"), "{sql}: {reason}");
                assert_eq!(position.map(|p| p.line), Some(1), "{sql}");
            }
        }
        let Err(QueryFailure::Refused { position, .. }) = check(
            "SELECT count(*),\n  pg_sleep(1) FROM events",
            Dialect::Postgres,
        ) else {
            panic!("accepted");
        };
        assert_eq!(position, Some(Position { line: 2, column: 3 }));
    }

    #[test]
    fn table_functions_casts_and_operators_outside_the_list_are_refused() {
        for sql in [
            "SELECT * FROM pragma_table_info('api_keys')",
            "SELECT * FROM json_each('[1]')",
            "SELECT * FROM generate_series(1, 10)",
            "SELECT 'pg_authid'::regclass",
            "SELECT CAST('x' AS regproc)",
            "SELECT 1 OPERATOR(pg_catalog.+) 1",
            "SELECT $1",
            "SELECT ?",
        ] {
            assert!(check(sql, Dialect::Postgres).is_err(), "{sql}");
        }
        assert!(
            check(
                "SELECT * FROM pragma_table_info('api_keys')",
                Dialect::Sqlite
            )
            .is_err()
        );
    }

    #[test]
    fn operators_whose_cost_ignores_cancellation_are_refused_on_postgres() {
        for sql in [
            "SELECT properties @> '{\"plan\":\"pro\"}' FROM events",
            "SELECT properties <@ properties FROM events",
            "SELECT properties ?| '{a,b}' FROM events",
            "SELECT properties ?& '{a,b}' FROM events",
            "SELECT properties @? '$.a' FROM events",
            "SELECT properties @@ '$.a == 1' FROM events",
            "SELECT name ~ 'a+' FROM events",
            "SELECT name !~* 'a+' FROM events",
            "SELECT name SIMILAR TO '(a|b)%' FROM events",
            "SELECT 1 FROM events WHERE name ~ ANY(SELECT name FROM events)",
            "SELECT properties #- '{a}' FROM events",
            "SELECT ~ 1",
            "SELECT |/ 4",
            "SELECT 10 ^ 131000",
            "SELECT CAST(name AS text[]) FROM events",
            "SELECT name::numeric[] FROM events",
            "SELECT current_role",
            "SELECT current_schema, name FROM events",
            "SELECT concat(name, name) FROM events",
            "SELECT name LIKE name FROM events",
            "SELECT name LIKE '%' || name FROM events",
            "SELECT name ILIKE 'a' || 'b' FROM events",
            "SELECT name ~~ name FROM events",
            "SELECT name NOT LIKE 'a' ESCAPE name FROM events",
            "SELECT CAST(name AS jsonb) FROM events",
            "SELECT CAST('[' || name || ']' AS json) FROM events",
            "SELECT to_char(timestamp, name) FROM events",
            "SELECT to_timestamp(name, name) FROM events",
            "SELECT CAST(id AS char(10485760)) FROM events",
            "SELECT CAST(id AS varchar(20000)) FROM events",
            "SELECT variance(timestamp), stddev(timestamp) FROM events",
            "SELECT string_agg(name, ',') FROM events",
            "SELECT X'FF' || X'00'",
            "SELECT B'0101'",
            "SELECT name COLLATE \"und-x-icu\" FROM events",
        ] {
            let reason = refusal(sql, Dialect::Postgres);
            assert!(
                ["not allowed", "must be", "at most"]
                    .iter()
                    .any(|words| reason.contains(words)),
                "{sql}: {reason}"
            );
        }
        // What stays: one value out of a document, compared in linear time.
        for sql in [
            "SELECT properties->>'plan' = 'pro', properties #>> '{a,b}', properties ? 'plan' FROM events",
            "SELECT name LIKE 'a%', name ILIKE '%B', name ~~ 'x', name ^@ 'sign', 5 # 3 FROM events",
            "SELECT -1, +1, NOT true, name || '!' FROM events WHERE id = ANY(SELECT id FROM events)",
        ] {
            assert!(
                check(sql, Dialect::Postgres).is_ok(),
                "{sql}: {:?}",
                check(sql, Dialect::Postgres).err()
            );
        }
        assert!(check("SELECT name GLOB 'a*' FROM events", Dialect::Sqlite).is_err());
        // Patterns: literals of at most 100 bytes, at most 10 per query.
        let long = format!("SELECT name LIKE '{}' FROM events", "a".repeat(101));
        assert!(refusal(&long, Dialect::Postgres).contains("100 bytes"));
        let ten = ["name LIKE 'a%'"; 10].join(" OR ");
        assert!(
            check(
                &format!("SELECT 1 FROM events WHERE {ten}"),
                Dialect::Postgres
            )
            .is_ok()
        );
        let eleven = ["name ILIKE 'a%'"; 11].join(" OR ");
        assert!(
            refusal(
                &format!("SELECT 1 FROM events WHERE {eleven}"),
                Dialect::Postgres
            )
            .contains("at most 10")
        );
        let many = vec!["name"; 101].join(", ");
        assert!(
            refusal(
                &format!("SELECT greatest({many}) FROM events"),
                Dialect::Postgres
            )
            .contains("at most 100")
        );
        let hundred = vec!["name"; 100].join(", ");
        assert!(
            check(
                &format!("SELECT greatest({hundred}) FROM events"),
                Dialect::Postgres
            )
            .is_ok()
        );
        let ids = (0..1001)
            .map(|i| i.to_string())
            .collect::<Vec<_>>()
            .join(", ");
        assert!(
            refusal(
                &format!("SELECT 1 FROM events WHERE timestamp IN ({ids})"),
                Dialect::Postgres
            )
            .contains("at most 1000")
        );
        assert!(
            check(
                &format!("SELECT 1 FROM events WHERE timestamp IN ({ids})"),
                Dialect::Sqlite
            )
            .is_ok()
        );
        assert!(
            check(
                "SELECT name COLLATE \"C\", name COLLATE ucs_basic FROM events",
                Dialect::Postgres
            )
            .is_ok()
        );
        assert!(check("SELECT X'41'", Dialect::Sqlite).is_ok());
        // SQLite bounds these itself (values of 100 KB, patterns of 100 B).
        assert!(check("SELECT name LIKE name FROM events", Dialect::Sqlite).is_ok());
        for sql in [
            "SELECT CAST('{\"a\": 1}' AS jsonb), '[1]'::json, jsonb '{}' FROM events",
            "SELECT to_char(timestamp, 'YYYY-MM-DD'), CAST(id AS varchar(100)) FROM events",
            "SELECT name NOT LIKE 'a!%' ESCAPE '!' FROM events",
        ] {
            assert!(
                check(sql, Dialect::Postgres).is_ok(),
                "{sql}: {:?}",
                check(sql, Dialect::Postgres).err()
            );
        }
    }

    #[test]
    fn row_functions_called_as_columns_are_refused_on_postgres() {
        for sql in [
            "SELECT e.pg_typeof FROM events e",
            "SELECT (e).row_to_json FROM events e",
            "SELECT (e).pg_column_size FROM events e",
            "SELECT events.to_jsonb FROM events",
            "SELECT e.\"json_agg\" FROM events e",
        ] {
            let reason = refusal(sql, Dialect::Postgres);
            assert!(reason.contains("alias.function"), "{sql}: {reason}");
        }
        // A subquery's column named like an allowed function is still a column.
        let sql = "SELECT c.count FROM (SELECT name, count(*) FROM events GROUP BY name) c";
        assert!(check(sql, Dialect::Postgres).is_ok());
    }

    #[test]
    fn size_emptiness_and_nul_are_refused_before_parsing() {
        let long = format!("SELECT 1 {}", " ".repeat(super::MAX_SQL_BYTES));
        assert!(refusal(&long, Dialect::Sqlite).contains("bytes"));
        assert!(refusal("  \n ", Dialect::Sqlite).contains("empty"));
        assert!(refusal("SELECT 1\0; DROP TABLE x", Dialect::Sqlite).contains("NUL"));
        let deep = format!("SELECT {}1{}", "(".repeat(200), ")".repeat(200));
        assert!(refusal(&deep, Dialect::Postgres).contains("could not be read"));
    }

    #[test]
    fn unreadable_sql_says_where() {
        let Err(QueryFailure::Refused { position, reason }) =
            check("SELECT * FROM events WHERE )", Dialect::Sqlite)
        else {
            panic!("accepted");
        };
        assert!(reason.starts_with("the SQL could not be read"), "{reason}");
        assert!(position.is_some(), "{reason}");
    }

    #[test]
    fn the_normal_form_ignores_spacing_and_comments_only() {
        let a = check(
            "SELECT  count(*)\nFROM /* c */ events -- x",
            Dialect::Postgres,
        )
        .unwrap();
        let b = check("SELECT count(*) FROM events", Dialect::Postgres).unwrap();
        assert_eq!(a.normalized(), b.normalized());
        assert_eq!(a.normalized(), "SELECT count(*) FROM events");
        assert_eq!(a.text(), "SELECT  count(*)\nFROM /* c */ events -- x");
        // Spelling, case and whether there is a space at all all count.
        for (x, y) in [
            ("SELECT 1 -1", "SELECT 1 - 1"),
            ("SELECT 7 AS Name", "SELECT 7 AS name"),
            ("SELECT 'é'", "SELECT 'e'"),
        ] {
            let (x, y) = (
                check(x, Dialect::Postgres).unwrap(),
                check(y, Dialect::Postgres).unwrap(),
            );
            assert_ne!(x.normalized(), y.normalized());
        }
        // Multi-byte text keeps its tokens whole.
        let multi = check("SELECT 'héllo',\n  'wörld'", Dialect::Postgres).unwrap();
        assert_eq!(multi.normalized(), "SELECT 'héllo', 'wörld'");
    }

    #[test]
    fn sqlite_queries_naming_columns_by_text_are_cached_by_their_exact_text() {
        // SQLite names a column without an alias by its text as written,
        // spacing and comments included: `1  +  1` and `1 + 1` answer with
        // different column names, so they may not share an answer...
        for (x, y) in [
            ("SELECT 1  +  1", "SELECT 1 + 1"),
            ("SELECT 1 /* a */ + 1", "SELECT 1 + 1"),
            ("SELECT 0x41", "SELECT X'41'"),
        ] {
            let (x, y) = (
                check(x, Dialect::Sqlite).unwrap(),
                check(y, Dialect::Sqlite).unwrap(),
            );
            assert_ne!(x.normalized(), y.normalized());
            assert_eq!(x.normalized(), x.text());
        }
        // ...while aliases, columns and `*` are named the same however the
        // query is spaced.
        for sql in [
            "SELECT  name,  count(*) AS n FROM events /* c */ GROUP BY name",
            "SELECT  e.name FROM events e UNION SELECT  * FROM (SELECT email FROM contacts)",
        ] {
            let checked = check(sql, Dialect::Sqlite).unwrap();
            assert!(
                !checked.normalized().contains("  "),
                "{}",
                checked.normalized()
            );
        }
        let mixed = check(
            "SELECT name FROM events UNION SELECT  1 + 1",
            Dialect::Sqlite,
        )
        .unwrap();
        assert_eq!(mixed.normalized(), mixed.text());
    }

    #[test]
    fn the_normal_form_is_linear_in_the_text() {
        // 40 000 items on one line: the positions are walked once.
        let items = vec!["1"; 40_000].join(",");
        let sql = format!("SELECT {items}");
        let started = std::time::Instant::now();
        let checked = check(&sql, Dialect::Postgres).unwrap();
        assert_eq!(checked.normalized(), sql);
        assert!(
            started.elapsed() < std::time::Duration::from_secs(5),
            "{:?}",
            started.elapsed()
        );
    }
}
