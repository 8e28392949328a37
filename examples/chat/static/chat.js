// The pug chat's browser client: plain JavaScript, no build step.
//
// Connects to the chat's WebSocket (same host, path /ws, or the URL in ?server=...), shows every
// broadcast message, and shows the server's error frames (answers to this client's bad frames).
// The page's state is mirrored on <body data-state="connecting|open|closed"> so tests and CSS
// can see it. Reconnects with a capped backoff when the connection drops.
'use strict';

(function () {
  const params = new URLSearchParams(window.location.search);
  const scheme = window.location.protocol === 'https:' ? 'wss:' : 'ws:';
  const url = params.get('server') || `${scheme}//${window.location.host}/ws`;

  const list = document.getElementById('messages');
  const status = document.getElementById('status');
  const form = document.getElementById('send');
  const nameInput = document.getElementById('name');
  const messageInput = document.getElementById('message');

  nameInput.value = window.localStorage.getItem('chat-name') || '';

  let socket = null;
  let retryDelay = 500;

  function setState(state, text) {
    document.body.dataset.state = state;
    status.textContent = text;
  }

  function append(className, name, text) {
    const item = document.createElement('li');
    if (className) item.className = className;
    if (name !== null) {
      const who = document.createElement('span');
      who.className = 'name';
      who.textContent = `${name}:`;
      item.appendChild(who);
    }
    item.appendChild(document.createTextNode(text));
    list.appendChild(item);
    list.scrollTop = list.scrollHeight;
  }

  function connect() {
    setState('connecting', 'connecting…');
    socket = new WebSocket(url);
    socket.addEventListener('open', () => {
      retryDelay = 500;
      setState('open', 'connected');
    });
    socket.addEventListener('message', (event) => {
      let data;
      try {
        data = JSON.parse(event.data);
      } catch (_) {
        return;
      }
      if (typeof data.error === 'string') {
        append('error', null, `refused (${data.error}): ${data.detail}`);
      } else if (typeof data.name === 'string' && typeof data.message === 'string') {
        append('', data.name, data.message);
      }
    });
    socket.addEventListener('close', () => {
      setState('closed', `disconnected; retrying in ${Math.round(retryDelay / 1000)} s`);
      window.setTimeout(connect, retryDelay);
      retryDelay = Math.min(retryDelay * 2, 10000);
    });
  }

  form.addEventListener('submit', (event) => {
    event.preventDefault();
    const name = nameInput.value.trim();
    const message = messageInput.value;
    if (!name || !message || !socket || socket.readyState !== WebSocket.OPEN) return;
    window.localStorage.setItem('chat-name', name);
    socket.send(JSON.stringify({ name, message }));
    messageInput.value = '';
    messageInput.focus();
  });

  connect();
})();
