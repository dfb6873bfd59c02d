#!/usr/bin/env python3
# Admin API latency with the operator token and with a tenant token (hash + cache hit), on a
# throwaway release `doze serve`: 3 rounds of 2000 keep-alive GETs per route and caller.
# Run from the repository root after `cargo build --release -p doze-proxy`.
import http.client, json, statistics, subprocess, sys, time, socket, os
s=socket.socket(); s.bind(('127.0.0.1',0)); port=s.getsockname()[1]; s.close()
s=socket.socket(); s.bind(('127.0.0.1',0)); pport=s.getsockname()[1]; s.close()
tok='bench-admin-token-0123456789'
d=os.environ.get('WORK', '/tmp/rest-token-latency'); subprocess.run(['rm','-rf',d]); os.makedirs(d)
env=dict(os.environ, DOZE_ADMIN_TOKEN=tok)
p=subprocess.Popen([os.environ.get('DOZE', 'target/release/doze'),'serve','--proxy-listen',f'127.0.0.1:{pport}','--admin-listen',f'127.0.0.1:{port}','--data-dir',d+'/data','--db-dsn',f'sqlite://{d}/state.db','--log-level','warn'],env=env,stderr=subprocess.DEVNULL)
time.sleep(1.5)
c=http.client.HTTPConnection('127.0.0.1',port)
def req(m,path,token,body=None):
    h={'Authorization':'Bearer '+token}
    if body is not None: h['Content-Type']='application/json'
    c.request(m,path,body=json.dumps(body) if body is not None else None,headers=h)
    r=c.getresponse(); data=r.read(); return r.status,data
req('POST','/api/v1/tenants',tok,{'name':'bench'})
st,data=req('POST','/api/v1/tenants/bench/tokens',tok,{})
tenant=json.loads(data)['token']
for i in range(5):
    req('POST','/api/v1/projects',tenant,{'name':f'p{i}'})
res={}
for rnd in range(3):
    for who,t in [('operator',tok),('tenant',tenant)]:
        for path in ['/api/v1/info','/api/v1/projects']:
            lat=[]
            for _ in range(2000):
                t0=time.perf_counter(); st,_=req('GET',path,t); lat.append((time.perf_counter()-t0)*1e6)
                assert st==200
            res.setdefault((who,path),[]).append(statistics.median(lat))
for k,v in res.items(): print(k, ['%.0f us'%x for x in v], 'median %.0f us'%statistics.median(v))
p.terminate(); p.wait()
