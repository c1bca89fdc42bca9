//! Sieve grammar (RFC 5228 section 8.2): tokens from `lexer.rs` into a
//! generic tree of commands, arguments, tests and blocks. Knows no command
//! names; `compile.rs` checks the tree against the supported commands.
//!
//! Recursion (blocks, test lists, `not`) is bounded by the nesting limit,
//! so no input can exhaust the stack.

use super::lexer::{Tok, Token};
use super::CompileError;

#[derive(Debug, Clone)]
pub enum Arg {
    /// A string or a string list; `list` says whether brackets were used.
    Strings {
        values: Vec<String>,
        list: bool,
        line: usize,
        column: usize,
    },
    Number {
        value: u64,
        line: usize,
        column: usize,
    },
    Tag {
        name: String,
        line: usize,
        column: usize,
    },
}

impl Arg {
    pub fn pos(&self) -> (usize, usize) {
        match self {
            Arg::Strings { line, column, .. } | Arg::Number { line, column, .. } | Arg::Tag { line, column, .. } => {
                (*line, *column)
            }
        }
    }
}

#[derive(Debug, Clone)]
pub struct TestNode {
    pub name: String,
    pub line: usize,
    pub column: usize,
    pub args: Vec<Arg>,
    pub tests: Vec<TestNode>,
    /// Whether the tests came in parentheses (a test list).
    pub test_list: bool,
}

#[derive(Debug, Clone)]
pub struct CommandNode {
    pub name: String,
    pub line: usize,
    pub column: usize,
    pub args: Vec<Arg>,
    pub tests: Vec<TestNode>,
    pub test_list: bool,
    pub block: Option<Vec<CommandNode>>,
}

struct Parser<'a> {
    toks: &'a [Token],
    i: usize,
    max_depth: usize,
    end: (usize, usize),
}

impl Parser<'_> {
    fn peek(&self) -> Option<&Token> {
        self.toks.get(self.i)
    }
    fn pos(&self) -> (usize, usize) {
        self.peek().map_or(self.end, |t| (t.line, t.column))
    }
    fn err(&self, message: impl Into<String>) -> CompileError {
        let (line, column) = self.pos();
        CompileError { line, column, message: message.into() }
    }
    fn found(&self) -> String {
        match self.peek().map(|t| &t.tok) {
            None => "end of script".into(),
            Some(Tok::Ident(s)) => format!("identifier '{s}'"),
            Some(Tok::Tag(s)) => format!("tag ':{s}'"),
            Some(Tok::Number(n)) => format!("number {n}"),
            Some(Tok::Str(_)) => "string".into(),
            Some(Tok::LBracket) => "'['".into(),
            Some(Tok::RBracket) => "']'".into(),
            Some(Tok::LParen) => "'('".into(),
            Some(Tok::RParen) => "')'".into(),
            Some(Tok::LBrace) => "'{'".into(),
            Some(Tok::RBrace) => "'}'".into(),
            Some(Tok::Comma) => "','".into(),
            Some(Tok::Semi) => "';'".into(),
        }
    }
    fn eat(&mut self, t: &Tok) -> bool {
        if self.peek().is_some_and(|x| &x.tok == t) {
            self.i += 1;
            true
        } else {
            false
        }
    }

    fn commands(&mut self, depth: usize, in_block: bool) -> Result<Vec<CommandNode>, CompileError> {
        let mut out = Vec::new();
        loop {
            match self.peek().map(|t| &t.tok) {
                None if !in_block => return Ok(out),
                None => return Err(self.err("expected '}' before end of script")),
                Some(Tok::RBrace) if in_block => {
                    self.i += 1;
                    return Ok(out);
                }
                Some(Tok::Ident(_)) => out.push(self.command(depth)?),
                Some(_) => return Err(self.err(format!("expected a command, found {}", self.found()))),
            }
        }
    }

    fn command(&mut self, depth: usize) -> Result<CommandNode, CompileError> {
        let (line, column) = self.pos();
        let name = match self.peek().map(|t| &t.tok) {
            Some(Tok::Ident(n)) => n.clone(),
            _ => return Err(self.err("expected a command")),
        };
        self.i += 1;
        let args = self.arguments()?;
        let (tests, test_list) = self.tests_opt(depth)?;
        let block = if self.eat(&Tok::Semi) {
            None
        } else if self.eat(&Tok::LBrace) {
            if depth + 1 > self.max_depth {
                return Err(CompileError { line, column, message: "blocks nested too deeply".into() });
            }
            Some(self.commands(depth + 1, true)?)
        } else {
            // Reported where the command's last token is, as the ';' belongs there.
            let (line, column) = match self.peek() {
                None => self.end,
                Some(_) => self.toks.get(self.i.wrapping_sub(1)).map_or(self.end, |t| (t.line, t.column)),
            };
            let message = format!("missing ';' after command '{name}' (found {})", self.found());
            return Err(CompileError { line, column, message });
        };
        Ok(CommandNode { name, line, column, args, tests, test_list, block })
    }

    fn arguments(&mut self) -> Result<Vec<Arg>, CompileError> {
        let mut args = Vec::new();
        loop {
            let (line, column) = self.pos();
            match self.peek().map(|t| &t.tok) {
                Some(Tok::Str(s)) => {
                    args.push(Arg::Strings { values: vec![s.clone()], list: false, line, column });
                    self.i += 1;
                }
                Some(Tok::Number(n)) => {
                    args.push(Arg::Number { value: *n, line, column });
                    self.i += 1;
                }
                Some(Tok::Tag(t)) => {
                    args.push(Arg::Tag { name: t.clone(), line, column });
                    self.i += 1;
                }
                Some(Tok::LBracket) => {
                    self.i += 1;
                    let mut values = Vec::new();
                    loop {
                        match self.peek().map(|t| &t.tok) {
                            Some(Tok::Str(s)) => {
                                values.push(s.clone());
                                self.i += 1;
                            }
                            _ => return Err(self.err(format!("expected a string in list, found {}", self.found()))),
                        }
                        if self.eat(&Tok::Comma) {
                            continue;
                        }
                        if self.eat(&Tok::RBracket) {
                            break;
                        }
                        return Err(self.err(format!("expected ',' or ']' in string list, found {}", self.found())));
                    }
                    args.push(Arg::Strings { values, list: true, line, column });
                }
                _ => return Ok(args),
            }
        }
    }

    fn tests_opt(&mut self, depth: usize) -> Result<(Vec<TestNode>, bool), CompileError> {
        match self.peek().map(|t| &t.tok) {
            Some(Tok::LParen) => {
                if depth + 1 > self.max_depth {
                    return Err(self.err("tests nested too deeply"));
                }
                self.i += 1;
                let mut tests = vec![self.test(depth + 1)?];
                loop {
                    if self.eat(&Tok::Comma) {
                        tests.push(self.test(depth + 1)?);
                    } else if self.eat(&Tok::RParen) {
                        return Ok((tests, true));
                    } else {
                        return Err(self.err(format!("expected ',' or ')' in test list, found {}", self.found())));
                    }
                }
            }
            Some(Tok::Ident(_)) => {
                if depth + 1 > self.max_depth {
                    return Err(self.err("tests nested too deeply"));
                }
                Ok((vec![self.test(depth + 1)?], false))
            }
            _ => Ok((Vec::new(), false)),
        }
    }

    fn test(&mut self, depth: usize) -> Result<TestNode, CompileError> {
        let (line, column) = self.pos();
        let name = match self.peek().map(|t| &t.tok) {
            Some(Tok::Ident(n)) => n.clone(),
            _ => return Err(self.err(format!("expected a test, found {}", self.found()))),
        };
        self.i += 1;
        let args = self.arguments()?;
        let (tests, test_list) = self.tests_opt(depth)?;
        Ok(TestNode { name, line, column, args, tests, test_list })
    }
}

/// Parses tokens into the command tree.
pub fn parse(toks: &[Token], max_depth: usize, end: (usize, usize)) -> Result<Vec<CommandNode>, CompileError> {
    let mut p = Parser { toks, i: 0, max_depth, end };
    p.commands(0, false)
}
