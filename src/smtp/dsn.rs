//! The parameters of the DSN extension (RFC 3461): `RET=` and `ENVID=` on
//! MAIL FROM, `NOTIFY=` and `ORCPT=` on RCPT TO. Parsed and checked here
//! from the client's text (a bad one is 501 5.5.4), kept in the queue in
//! their wire form (the envelope record's raw ESMTP parameter fields), read
//! back from there, and sent on unchanged to a next hop that offers DSN.
//!
//! Place in the pipeline: the SMTP server's parameter parsers
//! (`super::address`) hand each DSN keyword to [`mail_param`] or
//! [`rcpt_param`]; ingress copies the result into the queued envelope;
//! delivery decides with [`Notify`] which notifications a recipient gets,
//! the SMTP client sends [`MailDsn::wire`] and [`RcptDsn::wire`] to a
//! server that offers DSN, and the report builder (`crate::deliver::dsn`)
//! writes the decoded ENVID and ORCPT into Original-Envelope-Id and
//! Original-Recipient.
//!
//! Bounds: ENVID at most `ENVID_BYTES_MAX` bytes and ORCPT at most
//! `ORCPT_BYTES_MAX` (RFC 3461 §4.4, §4.2), both as xtext; together with
//! the other parameters they stay within the queue format's
//! `ESMTP_PARAMS_SIZE_BYTES_MAX`.

use super::address::ParamError;

/// Longest ENVID value, as xtext (RFC 3461 §4.4: 100 characters).
pub const ENVID_BYTES_MAX: usize = 100;
/// Longest ORCPT value, address type and xtext (RFC 3461 §4.2: 500 characters).
pub const ORCPT_BYTES_MAX: usize = 500;
/// Longest ORCPT address type (an atom such as `rfc822` or `utf-8`).
const ADDRESS_TYPE_BYTES_MAX: usize = 32;

// Both fit the queue's parameter fields with room for ringpost's own.
const _: () = assert!(ENVID_BYTES_MAX + "RET=HDRS ENVID= XREPLICA=0123456789ABCDEF".len() <= 1024);
const _: () = assert!(ORCPT_BYTES_MAX + " ORCPT= NOTIFY=SUCCESS,FAILURE,DELAY".len() <= 1024);

/// `NOTIFY=` (RFC 3461 §4.1): NEVER alone, or any of SUCCESS, FAILURE and
/// DELAY. A recipient without the parameter is `None`, which means
/// FAILURE,DELAY here and is passed on as no parameter.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Notify(u8);

impl Notify {
    pub const NEVER: Notify = Notify(1 << 0);
    pub const SUCCESS: Notify = Notify(1 << 1);
    pub const FAILURE: Notify = Notify(1 << 2);
    pub const DELAY: Notify = Notify(1 << 3);

    pub const fn contains(self, other: Notify) -> bool {
        self.0 & other.0 == other.0
    }

    /// The parameter's value, upper-case, in the order of RFC 3461.
    pub fn wire(self) -> String {
        if self.contains(Notify::NEVER) {
            return "NEVER".to_string();
        }
        let names = [(Notify::SUCCESS, "SUCCESS"), (Notify::FAILURE, "FAILURE"), (Notify::DELAY, "DELAY")];
        let words: Vec<&str> = names.iter().filter(|(n, _)| self.contains(*n)).map(|(_, w)| *w).collect();
        words.join(",")
    }

    /// A NOTIFY value: NEVER alone, or a list of SUCCESS, FAILURE and
    /// DELAY without repeats, any case.
    pub fn parse(value: &str) -> Result<Notify, ParamError> {
        let mut bits = 0u8;
        for word in value.split(',') {
            let bit = match word.to_ascii_uppercase().as_str() {
                "NEVER" => Notify::NEVER.0,
                "SUCCESS" => Notify::SUCCESS.0,
                "FAILURE" => Notify::FAILURE.0,
                "DELAY" => Notify::DELAY.0,
                _ => return Err(ParamError::Syntax("bad NOTIFY value (NEVER, or SUCCESS, FAILURE, DELAY)")),
            };
            if bits & bit != 0 {
                return Err(ParamError::Syntax("NOTIFY value given twice"));
            }
            bits |= bit;
        }
        if bits & Notify::NEVER.0 != 0 && bits != Notify::NEVER.0 {
            return Err(ParamError::Syntax("NOTIFY=NEVER must stand alone"));
        }
        Ok(Notify(bits))
    }
}

/// `RET=` (RFC 3461 §4.3): what a failure report carries of the message.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Ret {
    /// The whole message (bounded by the report builder).
    Full,
    /// Its header only.
    Hdrs,
}

/// The DSN parameters of MAIL FROM. ENVID is kept as xtext, as received.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct MailDsn {
    pub ret: Option<Ret>,
    pub envid: Option<Box<str>>,
}

/// The DSN parameters of one RCPT TO. ORCPT is kept as received:
/// `addr-type;xtext`.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct RcptDsn {
    pub notify: Option<Notify>,
    pub orcpt: Option<Box<str>>,
}

impl MailDsn {
    pub fn is_empty(&self) -> bool {
        self.ret.is_none() && self.envid.is_none()
    }

    /// ` RET=… ENVID=…` as sent after MAIL FROM (each part only if given;
    /// empty without either), with a leading space.
    pub fn wire(&self) -> String {
        let mut out = String::new();
        match self.ret {
            Some(Ret::Full) => out.push_str(" RET=FULL"),
            Some(Ret::Hdrs) => out.push_str(" RET=HDRS"),
            None => {}
        }
        if let Some(envid) = &self.envid {
            out.push_str(" ENVID=");
            out.push_str(envid);
        }
        out
    }

    /// The envelope id decoded from xtext, for Original-Envelope-Id.
    pub fn envid_text(&self) -> Option<String> {
        self.envid.as_deref().and_then(xtext_decode)
    }
}

impl RcptDsn {
    pub fn is_empty(&self) -> bool {
        self.notify.is_none() && self.orcpt.is_none()
    }

    /// ` NOTIFY=… ORCPT=…` as sent after RCPT TO, with a leading space.
    pub fn wire(&self) -> String {
        let mut out = String::new();
        if let Some(notify) = self.notify {
            out.push_str(" NOTIFY=");
            out.push_str(&notify.wire());
        }
        if let Some(orcpt) = &self.orcpt {
            out.push_str(" ORCPT=");
            out.push_str(orcpt);
        }
        out
    }

    /// Whether this recipient's sender asked for the notification `kind`
    /// (SUCCESS, FAILURE or DELAY). Without NOTIFY: failures and delays.
    pub fn wants(&self, kind: Notify) -> bool {
        match self.notify {
            Some(notify) => notify.contains(kind),
            None => kind == Notify::FAILURE || kind == Notify::DELAY,
        }
    }

    /// The original recipient for Original-Recipient: the address type and
    /// the address decoded from xtext (RFC 3464 §2.3.1).
    pub fn orcpt_text(&self) -> Option<(String, String)> {
        let (kind, xtext) = self.orcpt.as_deref()?.split_once(';')?;
        Some((kind.to_string(), xtext_decode(xtext)?))
    }
}

/// One DSN parameter of MAIL FROM (`key` upper-case): Ok(true) when it was
/// one (stored in `dsn`), Ok(false) when `key` is no DSN parameter.
pub fn mail_param(key: &str, value: Option<&str>, dsn: &mut MailDsn) -> Result<bool, ParamError> {
    match (key, value) {
        ("RET", Some(v)) => {
            dsn.ret = Some(match v.to_ascii_uppercase().as_str() {
                "FULL" => Ret::Full,
                "HDRS" => Ret::Hdrs,
                _ => return Err(ParamError::Syntax("bad RET value (FULL or HDRS)")),
            });
        }
        ("ENVID", Some(v)) => {
            if v.len() > ENVID_BYTES_MAX {
                return Err(ParamError::Syntax("ENVID longer than 100 characters"));
            }
            if !is_xtext(v) {
                return Err(ParamError::Syntax("ENVID is not xtext"));
            }
            dsn.envid = Some(v.into());
        }
        ("RET" | "ENVID", None) => return Err(ParamError::Syntax("RET and ENVID need a value")),
        _ => return Ok(false),
    }
    Ok(true)
}

/// One DSN parameter of RCPT TO (`key` upper-case), as [`mail_param`].
pub fn rcpt_param(key: &str, value: Option<&str>, dsn: &mut RcptDsn) -> Result<bool, ParamError> {
    match (key, value) {
        ("NOTIFY", Some(v)) => dsn.notify = Some(Notify::parse(v)?),
        ("ORCPT", Some(v)) => {
            if v.len() > ORCPT_BYTES_MAX {
                return Err(ParamError::Syntax("ORCPT longer than 500 characters"));
            }
            let Some((kind, address)) = v.split_once(';') else {
                return Err(ParamError::Syntax("ORCPT is not addr-type;xtext"));
            };
            let kind_ok = !kind.is_empty()
                && kind.len() <= ADDRESS_TYPE_BYTES_MAX
                && kind.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-');
            if !kind_ok || address.is_empty() || !is_xtext(address) {
                return Err(ParamError::Syntax("ORCPT is not addr-type;xtext"));
            }
            dsn.orcpt = Some(v.into());
        }
        ("NOTIFY" | "ORCPT", None) => return Err(ParamError::Syntax("NOTIFY and ORCPT need a value")),
        _ => return Ok(false),
    }
    Ok(true)
}

/// The DSN parameters among stored MAIL parameters (space separated,
/// written by [`MailDsn::wire`]); others are skipped, and so is a value
/// that does not parse (the record holds what the server accepted).
pub fn stored_mail(params: &str) -> MailDsn {
    let mut dsn = MailDsn::default();
    for item in params.split(' ').filter(|p| !p.is_empty()) {
        if let Some((key, value)) = item.split_once('=') {
            let _ = mail_param(key, Some(value), &mut dsn);
        }
    }
    dsn
}

/// The DSN parameters among a recipient's stored parameters.
pub fn stored_rcpt(params: &str) -> RcptDsn {
    let mut dsn = RcptDsn::default();
    for item in params.split(' ').filter(|p| !p.is_empty()) {
        if let Some((key, value)) = item.split_once('=') {
            let _ = rcpt_param(key, Some(value), &mut dsn);
        }
    }
    dsn
}

/// RFC 3461 §4 xtext: octets `!`..`~` but `+` and `=`, and `+HH` with
/// upper-case hex digits.
pub fn is_xtext(text: &str) -> bool {
    let bytes = text.as_bytes();
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'+' => {
                let hex = |b: Option<&u8>| b.is_some_and(|b| b.is_ascii_digit() || (b'A'..=b'F').contains(b));
                if !(hex(bytes.get(i + 1)) && hex(bytes.get(i + 2))) {
                    return false;
                }
                i += 3;
            }
            b'=' => return false,
            b'!'..=b'~' => i += 1,
            _ => return false,
        }
    }
    true
}

/// RFC 3461 §4 xtext: `+` and octets outside `!`..`~` and `=` as `+HH`.
pub fn xtext_encode(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for &b in text.as_bytes() {
        if (b'!'..=b'~').contains(&b) && b != b'+' && b != b'=' {
            out.push(b as char);
        } else {
            out.push_str(&format!("+{b:02X}"));
        }
    }
    out
}

/// The text an xtext stands for; None if it is not xtext or not UTF-8.
pub fn xtext_decode(text: &str) -> Option<String> {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'+' {
            let hex = std::str::from_utf8(bytes.get(i + 1..i + 3)?).ok()?;
            out.push(u8::from_str_radix(hex, 16).ok()?);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8(out).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rcpt(key: &str, value: Option<&str>) -> Result<RcptDsn, ParamError> {
        let mut dsn = RcptDsn::default();
        assert!(rcpt_param(key, value, &mut dsn)?);
        Ok(dsn)
    }

    fn mail(key: &str, value: Option<&str>) -> Result<MailDsn, ParamError> {
        let mut dsn = MailDsn::default();
        assert!(mail_param(key, value, &mut dsn)?);
        Ok(dsn)
    }

    #[test]
    fn notify_values() {
        assert_eq!(rcpt("NOTIFY", Some("never")).unwrap().notify, Some(Notify::NEVER));
        let n = rcpt("NOTIFY", Some("Delay,SUCCESS")).unwrap().notify.unwrap();
        assert!(n.contains(Notify::SUCCESS) && n.contains(Notify::DELAY) && !n.contains(Notify::FAILURE));
        assert_eq!(n.wire(), "SUCCESS,DELAY");
        for bad in ["NEVER,SUCCESS", "FAILURE,NEVER", "SUCCESS,SUCCESS", "", "SOMETIMES", "SUCCESS,", ",DELAY"] {
            assert!(matches!(rcpt("NOTIFY", Some(bad)), Err(ParamError::Syntax(_))), "{bad:?}");
        }
        assert!(rcpt("NOTIFY", None).is_err());
    }

    #[test]
    fn notify_defaults_to_failure_and_delay() {
        let none = RcptDsn::default();
        assert!(none.wants(Notify::FAILURE) && none.wants(Notify::DELAY) && !none.wants(Notify::SUCCESS));
        let never = RcptDsn { notify: Some(Notify::NEVER), orcpt: None };
        assert!(!never.wants(Notify::FAILURE) && !never.wants(Notify::DELAY) && !never.wants(Notify::SUCCESS));
    }

    #[test]
    fn orcpt_values() {
        let d = rcpt("ORCPT", Some("rfc822;bob+2Bx@example.net")).unwrap();
        assert_eq!(d.orcpt_text(), Some(("rfc822".to_string(), "bob+x@example.net".to_string())));
        assert_eq!(d.wire(), " ORCPT=rfc822;bob+2Bx@example.net");
        for bad in [
            "bob@example.net",
            ";bob@example.net",
            "rfc822;",
            "rfc 822;bob",
            "rfc822;bob+2",
            "rfc822;bob+2b@x",
            "rfc822;bob+ZZ@x",
            "rfc822;b\u{e9}b@x",
        ] {
            assert!(matches!(rcpt("ORCPT", Some(bad)), Err(ParamError::Syntax(_))), "{bad:?}");
        }
        let long = format!("rfc822;{}", "a".repeat(ORCPT_BYTES_MAX));
        assert!(rcpt("ORCPT", Some(&long)).is_err());
        let longest = format!("rfc822;{}", "a".repeat(ORCPT_BYTES_MAX - 7));
        assert!(rcpt("ORCPT", Some(&longest)).is_ok());
    }

    #[test]
    fn ret_and_envid_values() {
        assert_eq!(mail("RET", Some("hdrs")).unwrap().ret, Some(Ret::Hdrs));
        assert_eq!(mail("RET", Some("FULL")).unwrap().ret, Some(Ret::Full));
        assert!(mail("RET", Some("BODY")).is_err());
        assert!(mail("RET", None).is_err());
        let d = mail("ENVID", Some("QQ314159+2Bx")).unwrap();
        assert_eq!(d.envid_text().as_deref(), Some("QQ314159+x"));
        assert!(mail("ENVID", Some(&"x".repeat(ENVID_BYTES_MAX))).is_ok());
        assert!(mail("ENVID", Some(&"x".repeat(ENVID_BYTES_MAX + 1))).is_err());
        assert!(mail("ENVID", Some("a+4")).is_err());
        assert!(mail("ENVID", None).is_err());
        let mut other = MailDsn::default();
        assert_eq!(mail_param("SIZE", Some("10"), &mut other), Ok(false));
    }

    #[test]
    fn stored_forms_round_trip() {
        let m = MailDsn { ret: Some(Ret::Hdrs), envid: Some("ID+2B1".into()) };
        assert_eq!(m.wire(), " RET=HDRS ENVID=ID+2B1");
        assert_eq!(stored_mail(&format!("XREPLICA=0006201A2B3C4D02{}", m.wire())), m);
        let r = RcptDsn { notify: Some(Notify::SUCCESS), orcpt: Some("rfc822;a@b".into()) };
        assert_eq!(stored_rcpt(&format!("XFOLDER=x{}", r.wire())), r);
        assert_eq!(stored_rcpt(""), RcptDsn::default());
        assert_eq!(stored_rcpt("NOTIFY=NEVER,DELAY"), RcptDsn::default());
    }

    #[test]
    fn xtext() {
        assert_eq!(xtext_encode("a+b=c d\u{e9}"), "a+2Bb+3Dc+20d+C3+A9");
        assert_eq!(xtext_decode("a+2Bb+3Dc+20d+C3+A9").as_deref(), Some("a+b=c d\u{e9}"));
        assert!(is_xtext("a+2Bb"));
        assert!(!is_xtext("a b"));
        assert!(!is_xtext("a=b"));
    }
}
