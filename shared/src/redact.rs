//! Connection strings without their secrets, for messages, logs and settings shown to people.

/// Replaces the password of a URL (`scheme://user:secret@host/…`) or of a libpq key/value
/// string (`password=secret`) with `****`. Anything else is returned unchanged.
pub fn redact_url(url: &str) -> String {
    if let Some(scheme_end) = url.find("://") {
        let rest = &url[scheme_end + 3..];
        let authority_end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
        let authority = &rest[..authority_end];
        if let Some(at) = authority.rfind('@') {
            let userinfo = &authority[..at];
            if let Some(colon) = userinfo.find(':') {
                return format!("{}{}:****{}", &url[..scheme_end + 3], &userinfo[..colon], &rest[at..]);
            }
        }
        return redact_query_password(url);
    }
    redact_key_values(url)
}

/// `…?password=secret&…` in a URL's query.
fn redact_query_password(url: &str) -> String {
    let Some(q) = url.find('?') else { return url.to_owned() };
    let (head, query) = url.split_at(q + 1);
    let parts: Vec<String> = query
        .split('&')
        .map(|p| if p.to_ascii_lowercase().starts_with("password=") { "password=****".to_owned() } else { p.to_owned() })
        .collect();
    format!("{head}{}", parts.join("&"))
}

/// `host=… password=secret …` (libpq key/value form, value possibly single-quoted).
fn redact_key_values(s: &str) -> String {
    let lower = s.to_ascii_lowercase();
    let Some(start) = lower.find("password") else { return s.to_owned() };
    let after_key = &s[start + "password".len()..];
    let trimmed = after_key.trim_start();
    let Some(value) = trimmed.strip_prefix('=') else { return s.to_owned() };
    let value = value.trim_start();
    let value_start = s.len() - value.len();
    let value_len = if let Some(quoted) = value.strip_prefix('\'') {
        let mut end = 1;
        let mut chars = quoted.char_indices();
        while let Some((i, c)) = chars.next() {
            match c {
                '\\' => {
                    chars.next();
                }
                '\'' => {
                    end = i + 2;
                    break;
                }
                _ => end = i + 1 + c.len_utf8(),
            }
        }
        end
    } else {
        value.find(char::is_whitespace).unwrap_or(value.len())
    };
    format!("{}****{}", &s[..value_start], &s[value_start + value_len..])
}

#[cfg(test)]
mod tests {
    use super::redact_url;

    #[test]
    fn urls() {
        assert_eq!(redact_url("redis://:s3cret@127.0.0.1:6390/0"), "redis://:****@127.0.0.1:6390/0");
        assert_eq!(redact_url("rediss://app:p%40ss@h:1"), "rediss://app:****@h:1");
        assert_eq!(redact_url("postgresql://u:pw@h:5/db?sslmode=require"), "postgresql://u:****@h:5/db?sslmode=require");
        assert_eq!(redact_url("postgresql://u@h/db?password=pw&x=1"), "postgresql://u@h/db?password=****&x=1");
        assert_eq!(redact_url("redis://127.0.0.1:6390"), "redis://127.0.0.1:6390");
    }

    #[test]
    fn key_values() {
        assert_eq!(redact_url("host=h password=pw user=u"), "host=h password=**** user=u");
        assert_eq!(redact_url("host=h password = 'p w\\'x' user=u"), "host=h password = **** user=u");
        assert_eq!(redact_url("host=h"), "host=h");
    }
}
