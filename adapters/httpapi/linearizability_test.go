package httpapi_test

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"math"
	"math/rand/v2"
	"net/http"
	"net/url"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/anishathalye/porcupine"

	"github.com/tallyledger/tally/adapters/httpapi/apitest"
	"github.com/tallyledger/tally/domain"
	"github.com/tallyledger/tally/domain/ledger"
)

// The linearizability check records what many concurrent clients asked of a few data objects
// through HTTP and what they were told, with the time of each call and return, and asks
// porcupine whether some order of those operations, each taking effect at one instant between
// its call and its return, explains every answer under the sequential model of a data object
// below. Refusals are operations too: a refusal for the bound or for int32 must be explained by
// the value at some instant of the call, and must change nothing.

// linOpKind is what a recorded operation asked.
type linOpKind int

const (
	linRead linOpKind = iota
	linSet
	linIncrement
	linDecrement
)

// linInput is one call on one object.
type linInput struct {
	object  int64
	kind    linOpKind
	amount  int64 // Increment/Decrement: the constant as sent; its sign is ignored
	bounded bool
	bound   int64
	value   int32 // Set: the new value
	start   int32 // the object's value when the history began
}

// linOutcome is how a call ended.
type linOutcome int

const (
	linOK         linOutcome = iota
	linBound                 // refused: the bound would be passed
	linInt32                 // refused: the result would leave int32
	linConflict              // refused: changed concurrently too often, nothing changed
	linUnknown               // 503 or a transport failure: it may or may not have happened
	linUnexpected            // any other answer: never explained by the model
)

// linOutput is what the client was told.
type linOutput struct {
	outcome linOutcome
	value   int32 // Read: the value listed
	body    string
}

// dataObjectModel is the sequential specification of one data object's int value, partitioned
// by object, so that a state is one value. It is nondeterministic only for calls whose outcome
// the client never learnt.
var dataObjectModel = porcupine.NondeterministicModel{
	Partition: func(history []porcupine.Operation) [][]porcupine.Operation {
		byObject := map[int64][]porcupine.Operation{}
		var order []int64
		for _, op := range history {
			id := op.Input.(linInput).object
			if _, seen := byObject[id]; !seen {
				order = append(order, id)
			}
			byObject[id] = append(byObject[id], op)
		}
		out := make([][]porcupine.Operation, 0, len(order))
		for _, id := range order {
			out = append(out, byObject[id])
		}
		return out
	},
	// Every object starts from its own value, which each operation carries (see objectValue).
	Init: func() []any { return []any{unstarted} },
	Step: func(state, input, output any) []any {
		in, out := input.(linInput), output.(linOutput)
		cur := state.(int64)
		if cur == unstarted {
			cur = int64(in.start)
		}
		switch in.kind {
		case linRead:
			if out.outcome == linUnknown || (out.outcome == linOK && int64(out.value) == cur) {
				return []any{cur}
			}
			return nil
		case linSet:
			switch out.outcome {
			case linOK:
				return []any{int64(in.value)}
			case linUnknown:
				return []any{cur, int64(in.value)}
			case linConflict:
				return []any{cur}
			}
			return nil
		}
		next, refusal := modelChange(int32(cur), in)
		switch out.outcome {
		case linOK:
			if refusal == linOK {
				return []any{int64(next)}
			}
		case linBound, linInt32:
			if refusal == out.outcome {
				return []any{cur}
			}
		case linConflict:
			return []any{cur}
		case linUnknown:
			if refusal == linOK {
				return []any{cur, int64(next)}
			}
			return []any{cur}
		}
		return nil
	},
	Hash: func(state any) uint64 { return uint64(state.(int64)) },
	DescribeOperation: func(input, output any) string {
		in, out := input.(linInput), output.(linOutput)
		var call string
		switch in.kind {
		case linRead:
			call = "read"
		case linSet:
			call = fmt.Sprintf("set(%d)", in.value)
		case linIncrement, linDecrement:
			name := "inc"
			if in.kind == linDecrement {
				name = "dec"
			}
			call = fmt.Sprintf("%s(%d)", name, in.amount)
			if in.bounded {
				call = fmt.Sprintf("%s(%d, bound %d)", name, in.amount, in.bound)
			}
		}
		call = fmt.Sprintf("#%d %s", in.object, call)
		switch out.outcome {
		case linOK:
			if in.kind == linRead {
				return fmt.Sprintf("%s -> %d", call, out.value)
			}
			return call + " -> ok"
		case linBound:
			return call + " -> refused: bound"
		case linInt32:
			return call + " -> refused: int32"
		case linConflict:
			return call + " -> refused: conflict"
		case linUnknown:
			return call + " -> unknown"
		}
		return call + " -> " + out.body
	},
	DescribeState: func(state any) string {
		if state.(int64) == unstarted {
			return "initial"
		}
		return strconv.FormatInt(state.(int64), 10)
	},
}

// unstarted is the state of an object before its first operation: the operation supplies the
// object's starting value.
const unstarted = int64(math.MinInt64)

// modelChange is what the spec says an increment or decrement does to value cur: the sign of
// the amount is ignored, a result outside int32 is refused, and an enabled bound (inclusive;
// upper for increments, lower for decrements) refuses a result past it.
func modelChange(cur int32, in linInput) (int32, linOutcome) {
	amount := in.amount
	if amount < 0 {
		amount = -amount
	}
	next := int64(cur) + amount
	if in.kind == linDecrement {
		next = int64(cur) - amount
	}
	if next < math.MinInt32 || next > math.MaxInt32 {
		return cur, linInt32
	}
	if in.bounded && (in.kind == linIncrement && next > in.bound || in.kind == linDecrement && next < in.bound) {
		return cur, linBound
	}
	return int32(next), linOK
}

// linObject is an object under test: its id, name (a unique substring among the objects, for
// reading it through ListDataObjects' Contains) and starting value.
type linObject struct {
	id    int64
	name  string
	start int32
}

// linClient sends the calls of one simulated client to one instance.
type linClient struct {
	http  *http.Client
	base  string
	owner url.Values
}

// call posts a method and classifies the answer.
func (c linClient) call(ctx context.Context, method string, params url.Values) (int, []byte, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, c.base+"/api/data/"+method, strings.NewReader(params.Encode()))
	if err != nil {
		return 0, nil, err
	}
	req.Header.Set("Content-Type", "application/x-www-form-urlencoded")
	resp, err := c.http.Do(req)
	if err != nil {
		return 0, nil, err
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	return resp.StatusCode, body, err
}

// do runs one operation and returns what the client learnt.
func (c linClient) do(ctx context.Context, in linInput, name string) linOutput {
	params := with(c.owner, "Id", strconv.FormatInt(in.object, 10))
	var method string
	switch in.kind {
	case linRead:
		method = "ListDataObjectsToKey"
		params = with(c.owner, "Contains", name)
	case linSet:
		method = "SetIntValueToKey"
		params.Set("IntValue", strconv.Itoa(int(in.value)))
	case linIncrement, linDecrement:
		method = "IncrementIntValueToKey"
		if in.kind == linDecrement {
			method = "DecrementIntValueToKey"
		}
		params.Set("IntValue", strconv.FormatInt(in.amount, 10))
		if in.bounded {
			params.Set("EnableBound", "True")
			params.Set("Bound", strconv.FormatInt(in.bound, 10))
		}
	}
	status, body, err := c.call(ctx, method, params)
	if err != nil || status == http.StatusServiceUnavailable {
		return linOutput{outcome: linUnknown, body: fmt.Sprintf("%d %s %v", status, body, err)}
	}
	var res apitest.Result
	if err := json.Unmarshal(body, &res); err != nil {
		return linOutput{outcome: linUnexpected, body: fmt.Sprintf("%d %s", status, body)}
	}
	switch {
	case status == http.StatusOK && res.Result == 0:
		out := linOutput{outcome: linOK, body: string(body)}
		if in.kind == linRead {
			found := 0
			for _, o := range res.DataObjects {
				if o.ID == in.object {
					out.value = o.IntValue
					found++
				}
			}
			if found != 1 {
				return linOutput{outcome: linUnexpected, body: string(body)}
			}
		}
		return out
	case res.Msg() == domain.ErrBoundReached.Message:
		return linOutput{outcome: linBound, body: string(body)}
	case res.Msg() == domain.ErrInt32Limit.Message:
		return linOutput{outcome: linInt32, body: string(body)}
	case res.Msg() == domain.ErrConcurrentChange.Message:
		return linOutput{outcome: linConflict, body: string(body)}
	}
	return linOutput{outcome: linUnexpected, body: fmt.Sprintf("%d %s", status, body)}
}

// randomOp draws an operation on one of the objects. Values stay near the bounds and, for
// the object that starts near MaxInt32, near both ends of int32, so that refusals are common.
func randomOp(rng *rand.Rand, objs []linObject) linInput {
	o := objs[rng.IntN(len(objs))]
	in := linInput{object: o.id, start: o.start}
	near := func(center int64, spread int) int64 { return center + int64(rng.IntN(2*spread+1)-spread) }
	switch r := rng.IntN(10); {
	case r < 3:
		in.kind = linRead
	case r < 4:
		in.kind = linSet
		v := near(int64(o.start), 4)
		if o.start > math.MaxInt32-100 && rng.IntN(3) == 0 {
			v = math.MinInt32 + int64(rng.IntN(4)) // the other end of int32
		}
		in.value = int32(min(max(v, math.MinInt32), math.MaxInt32))
	default:
		in.kind = linIncrement
		if r >= 7 {
			in.kind = linDecrement
		}
		in.amount = int64(rng.IntN(7) - 2) // -2..4: the sign is ignored
		if rng.IntN(2) == 0 {
			in.bounded = true
			in.bound = near(int64(o.start), 5)
		}
	}
	return in
}

// linHistory is a recorded history, ready to check.
type linHistory struct {
	ops []porcupine.Operation
}

// record runs clients×opsPerClient random operations on objs, each client on one of envs in
// turn, and returns the history. Times are nanoseconds since start on the monotonic clock; an
// operation whose outcome is unknown never returns (math.MaxInt64), so it may take effect at
// any time after its call, or never.
func record(t *testing.T, envs []*apitest.Env, owner url.Values, objs []linObject, clients, opsPerClient int, seed uint64) linHistory {
	t.Helper()
	names := map[int64]string{}
	for _, o := range objs {
		names[o.id] = o.name
	}
	start := time.Now()
	ops := make([][]porcupine.Operation, clients)
	var wg sync.WaitGroup
	for c := range clients {
		wg.Add(1)
		go func() {
			defer wg.Done()
			env := envs[c%len(envs)]
			cl := linClient{http: env.HTTP, base: env.URL, owner: owner}
			rng := rand.New(rand.NewPCG(seed, uint64(c)))
			for range opsPerClient {
				in := randomOp(rng, objs)
				call := time.Since(start).Nanoseconds()
				out := cl.do(context.Background(), in, names[in.object])
				ret := time.Since(start).Nanoseconds()
				if out.outcome == linUnknown {
					ret = math.MaxInt64
				}
				ops[c] = append(ops[c], porcupine.Operation{ClientId: c, Input: in, Call: call, Output: out, Return: ret})
			}
		}()
	}
	wg.Wait()
	var h linHistory
	for _, o := range ops {
		h.ops = append(h.ops, o...)
	}
	return h
}

// check asks porcupine whether the history is linearizable and, when it is not, writes a
// visualization and fails with its path. It returns counts of the outcomes, for the log.
func (h linHistory) check(t *testing.T) map[linOutcome]int {
	t.Helper()
	counts := map[linOutcome]int{}
	for _, op := range h.ops {
		out := op.Output.(linOutput)
		counts[out.outcome]++
		if out.outcome == linUnexpected {
			t.Errorf("unexpected answer to %+v: %s", op.Input, out.body)
		}
	}
	model := dataObjectModel.ToModel()
	res, info := porcupine.CheckOperationsVerbose(model, h.ops, time.Minute)
	if res != porcupine.Ok {
		// Not t.TempDir: the file must outlive the test to be looked at.
		dir, err := os.MkdirTemp("", "tally-linearizability-")
		if err != nil {
			t.Fatal(err)
		}
		path := filepath.Join(dir, "history.html")
		if err := porcupine.VisualizePath(model, info, path); err != nil {
			t.Errorf("visualize: %v", err)
		}
		t.Fatalf("history of %d operations is %v (not linearizable or not decided); visualization: %s", len(h.ops), res, path)
	}
	return counts
}

// TestLinearizability checks histories of concurrent reads, sets, and bounded and unbounded
// increments and decrements of three objects through HTTP, on every backend, on one instance
// and across two instances sharing a store.
func TestLinearizability(t *testing.T) {
	clients, opsPerClient, rounds := 16, 25, 2
	if os.Getenv("TALLY_LONG") != "" {
		clients, opsPerClient, rounds = 16, 100, 10
	}
	for _, b := range apitest.Backends() {
		t.Run(b.Name, func(t *testing.T) {
			for _, instances := range []int{1, 2} {
				t.Run(fmt.Sprintf("%d instances", instances), func(t *testing.T) {
					env := apitest.Start(t, b.Open)
					p := env.Product("P")
					k := env.Key(p.ID)
					secret := env.Token(ledger.TokenSpec{Name: "lin", Methods: domain.AllMethods})
					owner := vals("token", secret, "ProductId", strconv.FormatInt(p.ID, 10), "Key", k.Key)
					envs := []*apitest.Env{env}
					for len(envs) < instances {
						envs = append(envs, env.AnotherInstance())
					}
					var objs []linObject
					for i, start := range []int32{0, 3, math.MaxInt32 - 3} {
						name := fmt.Sprintf("lin-%c-", 'a'+i)
						r := env.Call("AddDataObjectToKey", with(owner, "Name", name, "IntValue", strconv.Itoa(int(start))))
						id := r.Result(t).ID
						if id == 0 {
							t.Fatalf("add: %s", r.Body)
						}
						objs = append(objs, linObject{id: id, name: name, start: start})
					}
					for _, e := range envs[1:] {
						if err := e.Projection.WaitFor(context.Background(), env.Projection.Position()); err != nil {
							t.Fatal(err)
						}
					}
					total := map[linOutcome]int{}
					for round := range rounds {
						h := record(t, envs, owner, objs, clients, opsPerClient, uint64(round)+1)
						for k, n := range h.check(t) {
							total[k] += n
						}
						// The next round starts from where this one left the objects.
						if err := env.Projection.WaitFor(context.Background(), lastPosition(t, env.Store)); err != nil {
							t.Fatal(err)
						}
						for i := range objs {
							o, _ := env.Object(objs[i].id)
							objs[i].start = o.IntValue
						}
					}
					t.Logf("%d rounds of %d operations checked: %d ok, %d refused for the bound, %d for int32, %d conflicts, %d unknown",
						rounds, clients*opsPerClient, total[linOK], total[linBound], total[linInt32], total[linConflict], total[linUnknown])
				})
			}
		})
	}
}

// TestLinearizabilityModel shows that the model and checker above catch what they are there
// to catch: a stale read, a change counted twice, a refusal the value did not justify; and
// that a call with an unknown outcome may count or not.
func TestLinearizabilityModel(t *testing.T) {
	op := func(client int, in linInput, call, ret int64, out linOutput) porcupine.Operation {
		in.object = 1
		return porcupine.Operation{ClientId: client, Input: in, Call: call, Output: out, Return: ret}
	}
	inc := func(amount int64) linInput { return linInput{kind: linIncrement, amount: amount} }
	read := linInput{kind: linRead}
	okOut := linOutput{outcome: linOK}
	value := func(v int32) linOutput { return linOutput{outcome: linOK, value: v} }
	cases := []struct {
		name string
		ops  []porcupine.Operation
		want bool
	}{
		{"read after an acknowledged set sees it", []porcupine.Operation{
			op(0, linInput{kind: linSet, value: 5}, 0, 10, okOut), op(1, read, 20, 30, value(5))}, true},
		{"stale read", []porcupine.Operation{
			op(0, linInput{kind: linSet, value: 5}, 0, 10, okOut), op(1, read, 20, 30, value(0))}, false},
		{"concurrent read may see either", []porcupine.Operation{
			op(0, linInput{kind: linSet, value: 5}, 0, 30, okOut), op(1, read, 10, 20, value(0))}, true},
		{"an increment counted twice", []porcupine.Operation{
			op(0, inc(1), 0, 10, okOut), op(1, read, 20, 30, value(2))}, false},
		{"the sign of the amount is ignored", []porcupine.Operation{
			op(0, inc(-2), 0, 10, okOut), op(1, read, 20, 30, value(2))}, true},
		{"a refusal the bound did not justify", []porcupine.Operation{
			op(0, linInput{kind: linIncrement, amount: 1, bounded: true, bound: 5}, 0, 10, linOutput{outcome: linBound})}, false},
		{"a refusal the bound justified, and it changed nothing", []porcupine.Operation{
			op(0, linInput{kind: linDecrement, amount: 1, bounded: true, bound: 0}, 0, 10, linOutput{outcome: linBound}),
			op(1, read, 20, 30, value(0))}, true},
		{"an int32 refusal at MaxInt32", []porcupine.Operation{
			op(0, linInput{kind: linSet, value: math.MaxInt32}, 0, 10, okOut),
			op(0, inc(1), 20, 30, linOutput{outcome: linInt32}), op(1, read, 40, 50, value(math.MaxInt32))}, true},
		{"an unknown increment that happened", []porcupine.Operation{
			op(0, inc(1), 0, math.MaxInt64, linOutput{outcome: linUnknown}), op(1, read, 20, 30, value(1))}, true},
		{"an unknown increment that did not", []porcupine.Operation{
			op(0, inc(1), 0, math.MaxInt64, linOutput{outcome: linUnknown}), op(1, read, 20, 30, value(0))}, true},
		{"an unknown increment does not happen twice", []porcupine.Operation{
			op(0, inc(1), 0, math.MaxInt64, linOutput{outcome: linUnknown}), op(1, read, 20, 30, value(2))}, false},
	}
	model := dataObjectModel.ToModel()
	for _, c := range cases {
		if got := porcupine.CheckOperations(model, c.ops); got != c.want {
			t.Errorf("%s: linearizable %v, want %v", c.name, got, c.want)
		}
	}
}
