// Header, query-parameter and method matches of Gateway API HTTPRoutes, for nginx's njs (0.7.9 in Debian
// bookworm), as NGINX Gateway Fabric 1.6.2's generated configuration calls them. Written for the local
// environment's Gateway data plane; NGF's own nginx image carries an equivalent file.
//
// The contract with NGF's configuration:
//   - `js_preload_object matches from /etc/nginx/conf.d/matches.json;` defines the global `matches`: match key ->
//     the list of a path's matches in order of precedence, each
//     {redirectPath, any?, method?, headers?: ["name:value"], params?: ["name=value"]};
//   - a location sets `$match_key` and calls `js_content httpmatches.redirect;`;
//   - the first match the request satisfies wins: internal redirect to its `redirectPath` (an `internal`
//     location that proxies to the rule's backends), the query string kept; none matches: 404; a malformed
//     list: 500 with the reason in the error log.
//
// Plain index loops throughout: in njs 0.7.9 the arrays of a preloaded object have no Array.prototype methods
// (`find` on them fails with "is not a function").

function fail(r, message) {
    r.error('httpmatches: ' + message);
    r.return(500);
}

// Gateway API: header names compare case-insensitively (njs' headersIn is), values exactly. nginx joins repeated
// headers with ", ", so each comma-separated value counts.
function headerMatches(r, spec) {
    const colon = spec.indexOf(':');
    if (colon < 1) {
        throw new Error('invalid header match ' + JSON.stringify(spec));
    }
    const value = r.headersIn[spec.slice(0, colon)];
    if (value === undefined) {
        return false;
    }
    const wanted = spec.slice(colon + 1);
    const values = String(value).split(',');
    for (let i = 0; i < values.length; i++) {
        if (values[i].trim() === wanted) {
            return true;
        }
    }
    return false;
}

// Query parameters compare case-sensitively; for a repeated parameter the first value counts (Gateway API).
function paramMatches(r, spec) {
    const eq = spec.indexOf('=');
    if (eq < 1 || eq === spec.length - 1) {
        throw new Error('invalid query parameter match ' + JSON.stringify(spec));
    }
    let value = r.args[spec.slice(0, eq)];
    if (Array.isArray(value)) {
        value = value[0];
    }
    return value === spec.slice(eq + 1);
}

function satisfies(r, match) {
    if (match.any) {
        return true;
    }
    if (match.method && r.method !== match.method) {
        return false;
    }
    const headers = match.headers || [];
    for (let i = 0; i < headers.length; i++) {
        if (!headerMatches(r, headers[i])) {
            return false;
        }
    }
    const params = match.params || [];
    for (let i = 0; i < params.length; i++) {
        if (!paramMatches(r, params[i])) {
            return false;
        }
    }
    return true;
}

function redirect(r) {
    const key = r.variables.match_key;
    if (!key) {
        return fail(r, '$match_key is not set in this location');
    }
    if (typeof matches === 'undefined' || !Array.isArray(matches[key]) || matches[key].length === 0) {
        return fail(r, 'no list of matches for key ' + key);
    }
    const list = matches[key];
    let winner = null;
    try {
        for (let i = 0; i < list.length && winner === null; i++) {
            if (satisfies(r, list[i])) {
                winner = list[i];
            }
        }
    } catch (e) {
        return fail(r, e.message);
    }
    if (!winner) {
        r.return(404);
        return;
    }
    if (!winner.redirectPath) {
        return fail(r, 'match without redirectPath: ' + JSON.stringify(winner));
    }
    // The raw query string, as the client sent it (a rewrite in the target location would not see $request_uri).
    const args = r.variables.args;
    r.internalRedirect(winner.redirectPath + (args ? '?' + args : ''));
}

export default {redirect};
