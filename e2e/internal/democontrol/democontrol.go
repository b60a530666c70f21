// Package democontrol guards the demo's state-changing HTTP routes (the
// authorization server's DemoControls, the webhook receiver's POST /secret)
// against cross-site requests.
//
// A plain POST is a "simple" request: any web page the demo's user visits
// could send one to a loopback address, and the browser would send it
// without asking. A request with a custom header is not simple: the browser
// first sends a CORS preflight (OPTIONS), which the demo's servers do not
// answer, so it never sends the POST. curl sends the header with
// -H 'X-Demo-Control: 1'.
package democontrol

import "net/http"

// Header is the request header a demo control requires, with the value "1".
const Header = "X-Demo-Control"

// Require returns h behind the header check: a request without
// "X-Demo-Control: 1" is answered 403 Forbidden and h does not run.
func Require(h http.HandlerFunc) http.HandlerFunc {
	return func(w http.ResponseWriter, req *http.Request) {
		if req.Header.Get(Header) != "1" {
			http.Error(w, "a demo control needs the header "+Header+": 1", http.StatusForbidden)
			return
		}
		h(w, req)
	}
}
