package testauthz

import (
	"crypto/rand"
	"errors"
	"fmt"
	"html/template"
	"io"
	"net/http"
	"net/url"
	"strings"
	"sync"
	"unicode"
)

// The authorization server authenticates the end user with a sign-in of its
// own, as a real server does with its login page: RFC 6749 section 4.1.1
// ("the authorization server authenticates the resource owner") leaves how
// to the server. A browser signs in at {issuer}/login (a form posting
// user=<name>), which sets a session cookie; the authorization endpoint
// then approves (or shows its consent page) as that user, and the tokens it
// issues name the user as their subject (introspection's sub, RFC 7662
// section 2.2). A browser that never signed in acts as AuthServerOptions.User,
// so existing tests keep their single default user. The server reads
// nothing from the client's authorization request to choose the user.

// loginSessions maps session cookie values to signed-in users.
type loginSessions struct {
	mu    sync.Mutex
	users map[string]string
}

func (s *loginSessions) add(user string) string {
	id := rand.Text() + rand.Text()
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.users == nil {
		s.users = make(map[string]string)
	}
	s.users[id] = user
	return id
}

func (s *loginSessions) user(id string) (string, bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	u, ok := s.users[id]
	return u, ok
}

// loginCookieName is the session cookie's name. Cookies are scoped by host,
// not port (RFC 6265 section 8.5), and every test server listens on
// 127.0.0.1: the name carries the server's origin so that two
// authorization servers in one test never read each other's sessions.
func (a *AuthServer) loginCookieName() string {
	r := strings.NewReplacer(":", "_", "/", "_", ".", "_")
	return "testauthz_login_" + r.Replace(strings.TrimPrefix(a.Origin, "http://"))
}

// signedInUser returns the user the request's session cookie names, or the
// configured default user when the browser has not signed in.
func (a *AuthServer) signedInUser(r *http.Request) string {
	if c, err := r.Cookie(a.loginCookieName()); err == nil {
		if u, ok := a.logins.user(c.Value); ok {
			return u
		}
	}
	return a.opt.User
}

var loginPage = template.Must(template.New("login").Parse(`<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>Sign in</title></head><body>
<h1>Sign in</h1>
<form method="post"><label>User <input name="user" autocomplete="username"></label>
<input type="hidden" name="return_to" value="{{.}}">
<button type="submit">Sign in</button></form>
</body></html>
`))

// login serves the sign-in form (GET) and signs the browser in (POST
// user=<name>, optional return_to: a path on this server to go back to).
func (a *AuthServer) login(w http.ResponseWriter, r *http.Request) {
	if r.Method == http.MethodGet {
		w.Header().Set("Content-Type", "text/html; charset=utf-8")
		w.Header().Set("Content-Security-Policy", "default-src 'none'")
		w.Header().Set("X-Frame-Options", "DENY")
		_ = loginPage.Execute(w, r.URL.Query().Get("return_to"))
		return
	}
	if err := r.ParseForm(); err != nil {
		http.Error(w, "bad form", http.StatusBadRequest)
		return
	}
	user := r.PostForm.Get("user")
	if user == "" || len(user) > 200 || strings.ContainsFunc(user, unicode.IsControl) {
		http.Error(w, "user must be 1 to 200 characters without control characters", http.StatusBadRequest)
		return
	}
	http.SetCookie(w, &http.Cookie{Name: a.loginCookieName(), Value: a.logins.add(user), Path: "/",
		HttpOnly: true, SameSite: http.SameSiteLaxMode})
	// Only a path on this server: never an open redirect.
	if to := r.PostForm.Get("return_to"); strings.HasPrefix(to, "/") && !strings.HasPrefix(to, "//") {
		http.Redirect(w, r, to, http.StatusSeeOther)
		return
	}
	w.WriteHeader(http.StatusNoContent)
}

// SignIn signs the browser whose cookie jar client uses in at the
// authorization server as user: from then on the server's authorization
// endpoint acts for user when that browser visits it.
func (a *AuthServer) SignIn(client *http.Client, user string) error {
	if client.Jar == nil {
		return errors.New("testauthz: sign-in needs a client with a cookie jar")
	}
	resp, err := client.PostForm(a.URL+"/login", url.Values{"user": {user}})
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	_, _ = io.Copy(io.Discard, resp.Body)
	if resp.StatusCode != http.StatusNoContent {
		return fmt.Errorf("testauthz: sign-in answered HTTP %d", resp.StatusCode)
	}
	return nil
}
